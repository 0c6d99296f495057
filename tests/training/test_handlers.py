"""Training handlers on a bare ignite engine: best-model saving, resume, and the report."""

from __future__ import annotations

import json

import pytest
import torch
from ignite.engine import Engine, Events

from bundle.text import PromptEmbeddingTable
from bundle.training import BestModelSaver, ResumeCheckpoint, TrainingReport, WeightEMA
from bundle.utils.checkpoint import load_model_info


def _engines(metrics: list[float]):
    """A trainer whose every epoch runs an evaluator reporting the next of ``metrics`` as val_mean_dice."""
    net = torch.nn.Linear(2, 1)
    values = iter(metrics)
    evaluator = Engine(lambda e, b: {})

    @evaluator.on(Events.EPOCH_COMPLETED)
    def _metric(e):
        e.state.metrics["val_mean_dice"] = next(values)

    def step(engine, batch):
        with torch.no_grad():
            net.weight.add_(1.0)
        return {"loss": torch.tensor(float(engine.state.epoch))}

    trainer = Engine(step)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: evaluator.run([0]))
    return trainer, evaluator, net


def _table():
    return PromptEmbeddingTable({"liver": torch.ones(3)}, {"model_name": "x"})


def test_best_model_saver_keeps_the_best_epoch(tmp_path):
    trainer, evaluator, net = _engines([0.5, 0.7, 0.6])
    extra = {"structure_volumes_ml": {"liver": 900.0}}
    BestModelSaver(str(tmp_path / "model.pt"), net, _table(), evaluator, metadata=extra).attach(trainer)
    trainer.run([0], max_epochs=3)
    info = load_model_info(tmp_path / "model.pt")["metadata"]
    assert (info["epoch"], round(info["metric"], 3)) == (2, 0.7)
    assert info["structure_volumes_ml"] == {"liver": 900.0}
    saved = torch.load(tmp_path / "model.pt", weights_only=True)["weight"]
    assert torch.allclose(saved, net.weight.detach() - 1)  # the weights of epoch 2: one step before the last


def test_a_run_without_validation_still_leaves_a_model(tmp_path):
    trainer, _, net = _engines([0.1])
    BestModelSaver(str(tmp_path / "model.pt"), net, _table(), evaluator=None).attach(trainer)
    trainer.run([0], max_epochs=1)
    assert load_model_info(tmp_path / "model.pt")["metadata"]["metric"] is None


def test_resume_restores_the_state_and_a_finished_run_ends_at_once(tmp_path):
    trainer, _, net = _engines([0.1] * 5)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    ResumeCheckpoint(str(tmp_path / "last.pt"), {"model": net, "optimizer": opt}).attach(trainer)
    trainer.run([0], max_epochs=2)
    weight = net.weight.detach().clone()
    assert sorted(torch.load(tmp_path / "last.pt", weights_only=True)) == ["model", "optimizer", "trainer"]

    trainer2, _, net2 = _engines([0.1] * 5)
    ResumeCheckpoint(str(tmp_path / "last.pt"), {"model": net2}).attach(trainer2)
    trainer2.run([0], max_epochs=3)  # resumes at epoch 2, runs one more
    assert trainer2.state.epoch == 3 and torch.equal(net2.weight, weight + 1)
    trainer3, _, net3 = _engines([0.1])
    ResumeCheckpoint(str(tmp_path / "last.pt"), {"model": net3}).attach(trainer3)
    trainer3.run([0], max_epochs=3)  # already finished: no step taken
    assert torch.equal(net3.weight, weight + 1)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left


def test_weight_ema_averages_each_iteration_and_resumes(tmp_path):
    # the trainer adds 1 to the weight per iteration: weights 1, 2, 3 after iterations 1-3 (starting at 0)
    trainer, _, net = _engines([0.1] * 3)
    with torch.no_grad():
        net.weight.zero_()
    ema = WeightEMA(net, decay=0.5)
    ema.attach(trainer)
    ResumeCheckpoint(str(tmp_path / "last.pt"), {"model": net, "ema": ema, "off": None}).attach(trainer)
    trainer.run([0], max_epochs=3)
    # update 0 copies (1); then min(0.5, (1 + n) / (10 + n)): n=1 -> 2/11, n=2 -> 0.25
    expected = 1.0
    for n, w in ((1, 2.0), (2, 3.0)):
        d = min(0.5, (1 + n) / (10 + n))
        expected = expected * d + w * (1 - d)
    assert torch.allclose(ema.module.weight, torch.full_like(net.weight, expected))
    assert ema.module.weight.data_ptr() != net.weight.data_ptr() and int(ema.n_averaged) == 3
    assert sorted(torch.load(tmp_path / "last.pt", weights_only=True)) == ["ema", "model", "trainer"]

    trainer2, _, net2 = _engines([0.1])
    ema2 = WeightEMA(net2, decay=0.5)
    ResumeCheckpoint(str(tmp_path / "last.pt"), {"model": net2, "ema": ema2}).attach(trainer2)
    trainer2.run([0], max_epochs=3)
    assert torch.equal(ema2.module.weight, ema.module.weight) and int(ema2.n_averaged) == 3
    with pytest.raises(ValueError, match="decay must be in"):
        WeightEMA(net, decay=1.0)


def test_training_report_writes_curves_and_history(tmp_path):
    trainer, evaluator, _ = _engines([0.5, 0.6])
    TrainingReport(str(tmp_path), evaluator).attach(trainer)
    trainer.run([0], max_epochs=2)
    history = json.loads((tmp_path / "history.json").read_text())
    assert history == {"loss": [[1, 1.0], [2, 2.0]], "metric": [[1, 0.5], [2, 0.6]]}
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_keep_final_saves_the_last_weights_and_a_finished_run_writes_them_at_once(tmp_path):
    trainer, evaluator, net = _engines([0.5, 0.7, 0.6])
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    ResumeCheckpoint(str(tmp_path / "last.pt"), {"model": net, "optimizer": opt}).attach(trainer)
    BestModelSaver(str(tmp_path / "model.pt"), net, _table(), evaluator).attach(trainer)
    trainer.run([0], max_epochs=3)
    assert load_model_info(tmp_path / "model.pt")["metadata"]["epoch"] == 2  # best
    final = net.weight.detach().clone()
    # the finished run again, keeping its final weights: nothing trains, the model file becomes epoch 3's
    trainer2, evaluator2, net2 = _engines([0.1])
    ResumeCheckpoint(str(tmp_path / "last.pt"), {"model": net2}).attach(trainer2)
    BestModelSaver(str(tmp_path / "model.pt"), net2, _table(), evaluator2, keep="final").attach(trainer2)
    trainer2.run([0], max_epochs=3)
    info = load_model_info(tmp_path / "model.pt")["metadata"]
    assert info["epoch"] == 3 and info["metric"] is None  # not validated in this run
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["weight"], final)
    # trained with keep="final", the last validation's metric goes with the final weights
    trainer3, evaluator3, net3 = _engines([0.9, 0.2])
    BestModelSaver(str(tmp_path / "final.pt"), net3, _table(), evaluator3, keep="final").attach(trainer3)
    trainer3.run([0], max_epochs=2)
    info = load_model_info(tmp_path / "final.pt")["metadata"]
    assert (info["epoch"], round(info["metric"], 3)) == (2, 0.2)
    with pytest.raises(ValueError, match="keep"):
        BestModelSaver(str(tmp_path / "x.pt"), net3, _table(), keep="last")
