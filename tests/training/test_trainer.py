"""DiffusionTrainer and DiffusionPrepareBatch: MONAI's prepare_batch route, the loss network, refusals."""

from __future__ import annotations

import pytest
import torch

from bundle.training import DiffusionPrepareBatch, DiffusionTrainer


class _ToyDiffusion(torch.nn.Module):
    """``(image, target, context, **extra) -> loss terms``, the interface of MaskDiffusion's forward."""

    def __init__(self, bad: bool = False) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.bad = bad
        self.seen: list = []

    def forward(self, image, target, context, **extra):
        self.seen.append((image.shape, target.shape, context.shape, sorted(extra)))
        loss = ((self.w * image.mean() - target.float().mean()) ** 2) * (float("nan") if self.bad else 1.0)
        zero = loss.detach() * 0
        return {"loss": loss, "l1": zero, "dice": zero, "consistency": zero, "pred_mask": target.float()}


def _batches(n: int = 2, teacher: bool = False):
    for _ in range(n):
        batch = {
            "image": torch.rand(2, 1, 4, 4, 4),
            "target": torch.ones(2, 1, 4, 4, 4, dtype=torch.uint8),
            "prompt_embedding": torch.rand(2, 8, dtype=torch.float64),
        }
        if teacher:
            batch.update(
                teacher=torch.rand(2, 1, 4, 4, 4),
                teacher_weight=torch.ones(2, 1, 4, 4, 4),
                supervised=torch.tensor([1, 0]),
            )
        yield batch


def test_prepare_batch_hands_the_teacher_entries_on_only_when_present():
    prepare = DiffusionPrepareBatch()
    image, target, args, extra = prepare(next(_batches()), torch.device("cpu"))
    assert image.shape == (2, 1, 4, 4, 4) and target.dtype == torch.uint8 and extra == {}
    assert len(args) == 1 and args[0].dtype == torch.float32  # the prompt embedding, as float
    _, _, _, extra = prepare(next(_batches(teacher=True)), torch.device("cpu"))
    assert sorted(extra) == ["supervised", "teacher", "teacher_weight"] and extra["supervised"].dtype == torch.float32
    with pytest.raises(KeyError, match="RandPromptd and EmbedPromptd"):
        prepare({"image": torch.rand(1)}, torch.device("cpu"))


def test_prepare_batch_hands_the_network_plain_tensors_of_a_metatensor_batch():
    # a collated CacheDataset batch holds MetaTensors; the network gets their data without the metadata
    from monai.data import MetaTensor

    batch = {key: MetaTensor(value) for key, value in next(_batches(teacher=True)).items()}
    image, target, (context,), extra = DiffusionPrepareBatch()(batch, torch.device("cpu"))
    for tensor in (image, target, context, *extra.values()):
        assert type(tensor) is torch.Tensor
    assert torch.equal(image, batch["image"].as_tensor()) and torch.equal(target, batch["target"].as_tensor())


def test_trainer_runs_the_loss_network_and_steps_the_optimizer():
    net = _ToyDiffusion()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    trainer = DiffusionTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=list(_batches(3, True)), network=net, optimizer=opt
    )
    trainer.run()
    assert trainer.state.iteration == 3 and len(net.seen) == 3
    assert net.seen[0][3] == ["supervised", "teacher", "teacher_weight"]
    assert float(net.w) != 1.0  # the optimizer stepped
    assert set(trainer.state.output[0]) >= {"image", "label", "pred", "loss", "l1", "dice", "consistency"}


def test_a_non_finite_loss_stops_training_with_the_iteration():
    net = _ToyDiffusion(bad=True)
    trainer = DiffusionTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=list(_batches(2)),
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
    )
    with pytest.raises(FloatingPointError, match="non-finite training loss nan at iteration 1"):
        trainer.run()


def test_options_the_iteration_does_not_support_are_refused():
    net = _ToyDiffusion()
    with pytest.raises(NotImplementedError, match="accumulation_steps"):
        DiffusionTrainer(
            device=torch.device("cpu"),
            max_epochs=1,
            train_data_loader=[],
            network=net,
            optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
            accumulation_steps=2,
        )


def test_folder_prompts_ask_each_validation_batch_for_its_folders_classes():
    from bundle.training import FolderPromptsPrepareBatch

    prepare = FolderPromptsPrepareBatch([1, 2, 3, 4], {"hippo": {1: 1, 2: 2}, "abdomen": {1: 3, 4: 4}})
    batch = {"image": torch.zeros(1, 1, 4, 4, 4), "label": torch.zeros(1, 1, 4, 4, 4), "dataset": ["abdomen"]}
    image, label, args, kwargs = prepare(batch)
    assert image.shape == (1, 1, 4, 4, 4) and args == () and kwargs["prompt_rows"].tolist() == [2, 3]
    assert FolderPromptsPrepareBatch([1, 2])(batch)[3] == {}  # one folder: every class
    with pytest.raises(KeyError, match="other"):
        prepare({**batch, "dataset": ["other"]})
