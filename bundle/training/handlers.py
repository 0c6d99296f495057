"""Training handlers: resumable checkpoints, weight averaging, the best model file, and a report (curves and
overlays)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from torch.optim.swa_utils import AveragedModel

from bundle.text import PromptEmbeddingTable
from bundle.utils.checkpoint import load_checkpoint, load_model_info, load_state, save_model
from bundle.utils.config import bundle_version
from bundle.utils.distributed import is_main_process, unwrap_module
from bundle.utils.io import atomic_path, save_torch_atomic, write_text_atomic

__all__ = ["BestModelSaver", "ResumeCheckpoint", "TrainingReport", "WeightEMA", "WeightEMAHandler"]

logger = logging.getLogger(__name__)


class BestModelSaver:
    """Saves ``{"model", "prompt_table", "metadata"}`` to ``save_path`` when the validation metric improves.

    Attached to the trainer; it listens to ``evaluator`` for the metric. A run that ends without any validation
    still leaves a model file (its final weights). With ``keep="final"`` the model file is the final weights
    whatever the validation said: for a model whose validation metric does not measure what it is trained for (a
    suite's answers to absent prompts), or to compare the two rules. Resuming a finished run with ``keep="final"``
    writes its final weights without training further.

    Args:
        save_path: the model file (e.g. ``runs/train/model.pt``).
        network: the trained network (a DDP wrapper is unwrapped).
        prompt_table: the prompt table the embeddings came from.
        evaluator: the validation engine, whose ``metric_name`` is maximised.
        metric_name: the evaluator metric to maximise.
        keep: ``"best"`` (the weights of the best validation) or ``"final"`` (the weights at the end of training).
        metadata: further facts written with every save (e.g. ``structure_volumes_ml``, the scale of the
            "absent" rule, :func:`~bundle.data.structure_volumes_ml`).

    Raises:
        ValueError: ``keep`` is neither.
    """

    def __init__(
        self,
        save_path: str,
        network: torch.nn.Module,
        prompt_table: PromptEmbeddingTable,
        evaluator: Engine | None = None,
        metric_name: str = "val_mean_dice",
        keep: str = "best",
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        if keep not in ("best", "final"):
            raise ValueError(f"keep must be 'best' or 'final', got {keep!r}")
        self.keep = keep
        self.metadata = dict(metadata or {})
        self.save_path = Path(save_path)
        self.network = network
        self.prompt_table = prompt_table
        self.evaluator = evaluator
        self.metric_name = metric_name
        self.trainer: Engine | None = None
        self.best_metric = -math.inf
        self.best_epoch = -1
        self._last_validated = -1
        self.saved = False

    def attach(self, trainer: Engine) -> None:
        """Registers the saver on ``trainer`` (start, end) and on the evaluator (each validation).

        Args:
            trainer: the training engine.
        """
        self.trainer = trainer
        trainer.add_event_handler(Events.STARTED, self._on_start)
        if self.evaluator is not None:
            self.evaluator.add_event_handler(Events.EPOCH_COMPLETED, self._on_validation)
        trainer.add_event_handler(Events.COMPLETED, self._on_training_end)

    def _on_start(self, trainer: Engine) -> None:
        # a resumed run (ResumeCheckpoint restored the epoch count) keeps the best metric of the model file it left
        if trainer.state.epoch > 0 and self.save_path.is_file():
            meta = load_model_info(self.save_path)["metadata"]
            if meta.get("metric") is not None:
                self.best_metric, self.best_epoch = float(meta["metric"]), int(meta.get("epoch", -1))
            self.saved = True

    def _epoch(self) -> int:
        return int(self.trainer.state.epoch) if self.trainer is not None else -1

    def save(self, metric: float | None) -> None:
        """Writes the model file and its prompt table (main process only).

        Args:
            metric: the validation metric of these weights (``None``: no validation ran).
        """
        if not is_main_process():
            return
        net = unwrap_module(self.network)
        metadata = {
            **self.metadata,
            "bundle_version": bundle_version(),
            "network": type(net).__name__,
            "epoch": self._epoch(),
            "metric_name": self.metric_name,
            "metric": metric,
        }
        save_model(net, self.save_path, self.prompt_table, metadata)
        self.saved = True
        logger.info("saved model to %s (epoch %d, %s %s)", self.save_path, self._epoch(), self.metric_name, metric)

    def _on_validation(self, evaluator: Engine) -> None:
        self._last_validated = self._epoch()
        if self.keep == "final":
            return
        value = evaluator.state.metrics.get(self.metric_name)
        if value is None or not math.isfinite(float(value)):
            return
        if float(value) > self.best_metric:
            self.best_metric, self.best_epoch = float(value), self._epoch()
            self.save(self.best_metric)

    def _on_training_end(self, trainer: Engine) -> None:
        if self.keep == "final":
            metrics = self.evaluator.state.metrics if self.evaluator is not None else {}
            value = metrics.get(self.metric_name) if self._last_validated == self._epoch() else None
            self.save(None if value is None else float(value))
            return
        if not self.saved and not self.save_path.exists():
            logger.warning("no validation ran: saving the final weights as %s", self.save_path)
            self.save(None)


class WeightEMA(AveragedModel):
    """An exponential moving average of a network's weights, updated after every training iteration.

    ``module`` is a copy of the network holding the averaged weights: validate and save it instead of the live
    network (``train.json``: the validation segmenter and the best-model saver use ``ema_network``). It is a
    module, so :class:`ResumeCheckpoint` saves and restores it with the rest of the training state.

    Args:
        network: the trained network (a DDP wrapper is unwrapped); copied at construction, so build it after the
            network is on its device.
        decay: weight of the running average per update, in ``[0, 1)``; the average spans about ``1 / (1 - decay)``
            iterations. Update ``n`` uses ``min(decay, (1 + n) / (10 + n))``, so that a short run's average is
            not dominated by the initial weights.

    Raises:
        ValueError: when ``decay`` is outside ``[0, 1)``.
    """

    def __init__(self, network: torch.nn.Module, decay: float = 0.999) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        source = unwrap_module(network)
        self.decay = float(decay)
        super().__init__(source, avg_fn=self._average, use_buffers=True)
        self.__dict__["source"] = source  # not a submodule: the average's state dict holds only its copy

    def attach(self, trainer: Engine) -> None:
        """Updates the average after each of ``trainer``'s iterations.

        Args:
            trainer: the training engine.
        """
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._update)

    def _average(self, averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        n = float(num_averaged)
        decay = min(self.decay, (1.0 + n) / (10.0 + n))
        return averaged * decay + current.detach() * (1.0 - decay)

    def _update(self, trainer: Engine) -> None:
        self.update_parameters(self.source)


class WeightEMAHandler:
    """The handler-list entry of a :class:`WeightEMA` defined elsewhere in a config.

    MONAI's workflow checks and MONAI Label's bundle trainer read every item of ``train#handlers`` as a dict (and
    MONAI Label inserts its own handlers in front), so the average is defined once as ``ema`` and listed by this
    entry rather than by a reference string or a list index.

    Args:
        ema: the weight average to update after each training iteration.
    """

    def __init__(self, ema: WeightEMA) -> None:
        self.ema = ema

    def attach(self, trainer: Engine) -> None:
        """Attaches the average to ``trainer`` (:meth:`WeightEMA.attach`).

        Args:
            trainer: the training engine.
        """
        self.ema.attach(trainer)


class ResumeCheckpoint:
    """Saves the whole training state each epoch; resumes from it at start.

    Args:
        save_path: the resume file (e.g. ``runs/train/last.pt``).
        save_dict: objects with ``state_dict``/``load_state_dict``: network, optimizer, LR scheduler, weight
            average; ``None`` values (components switched off) are left out. The trainer it is attached to is
            added as ``"trainer"`` (epoch and iteration counts). Attach it first: other
            handlers see the restored epoch count when the run starts (the best-model saver and the report restore
            themselves from their own files).
        resume: load ``save_path`` at start when it exists. A finished run resumed again ends at once.
    """

    def __init__(self, save_path: str, save_dict: Mapping[str, Any], resume: bool = True) -> None:
        self.save_path = Path(save_path)
        self.save_dict = {k: v for k, v in save_dict.items() if v is not None}
        self.resume = resume

    def attach(self, trainer: Engine) -> None:
        """Adds ``trainer`` to the saved objects and loads the resume file when the run starts.

        Args:
            trainer: the training engine.
        """
        self.save_dict.setdefault("trainer", trainer)
        trainer.add_event_handler(Events.STARTED, self._load)

    def _register_save(self, trainer: Engine) -> None:
        # registered when the run starts, after every handler has attached: the epoch's state is saved after
        # validation and the best-model check, whatever the order of the handler list
        if not trainer.has_event_handler(self._save, Events.EPOCH_COMPLETED):
            trainer.add_event_handler(Events.EPOCH_COMPLETED, self._save)

    def _objects(self) -> dict[str, Any]:
        return {k: (unwrap_module(v) if isinstance(v, torch.nn.Module) else v) for k, v in self.save_dict.items()}

    def _save(self, trainer: Engine) -> None:
        if not is_main_process():
            return
        state = {k: v.state_dict() for k, v in self._objects().items()}
        save_torch_atomic(state, self.save_path)

    def _load(self, trainer: Engine) -> None:
        self._register_save(trainer)
        if not self.resume or not self.save_path.exists():
            return
        ckpt = load_checkpoint(self.save_path)
        max_epochs = trainer.state.max_epochs
        for key, obj in self._objects().items():
            if key not in ckpt:
                raise ValueError(f"{self.save_path}: resume file lacks '{key}'; delete it to start afresh")
            if isinstance(obj, torch.nn.Module):
                load_state(obj, ckpt, self.save_path, key=key)
            else:
                obj.load_state_dict(ckpt[key])
        # ignite restores the finished epoch count; keep this run's max_epochs
        trainer.state.max_epochs = max_epochs
        logger.info("resumed from %s at epoch %d of %s", self.save_path, trainer.state.epoch, max_epochs)
        if trainer.state.epoch >= (max_epochs or 0):
            logger.info("%s: training already finished (epoch %d)", self.save_path, trainer.state.epoch)
            trainer.terminate()


def _overlay_slice(image: np.ndarray, label: np.ndarray) -> int:
    """Index along the last axis with the most labelled voxels (the middle slice when unlabelled)."""
    counts = (label > 0).reshape(-1, label.shape[-1]).sum(0)
    return int(counts.argmax()) if counts.any() else label.shape[-1] // 2


class TrainingReport:
    """Writes ``curves.png`` (training loss, validation metric), ``history.json`` and ``overlays.png``.

    Attached to the trainer (its per-iteration loss is averaged per epoch); it listens to ``evaluator``.

    Args:
        output_dir: the folder for the report.
        evaluator: the validation engine.
        metric_name: the evaluator metric to plot.
        num_overlays: validation cases drawn (the first ones of each validation run).
    """

    def __init__(self, output_dir: str, evaluator: Engine, metric_name: str = "val_mean_dice", num_overlays: int = 3):
        self.output_dir = Path(output_dir)
        self.evaluator = evaluator
        self.metric_name = metric_name
        self.num_overlays = num_overlays
        self.trainer: Engine | None = None
        self.history: dict[str, list[list[float]]] = {"loss": [], "metric": []}
        self._losses: list[float] = []
        self._cases: list[Sequence[np.ndarray]] = []

    def attach(self, trainer: Engine) -> None:
        """Registers the report on ``trainer`` (losses per epoch) and on the evaluator (metric, overlays).

        Args:
            trainer: the training engine.
        """
        self.trainer = trainer
        trainer.add_event_handler(Events.STARTED, self._on_start)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._on_train_iteration)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._on_train_epoch)
        self.evaluator.add_event_handler(Events.EPOCH_STARTED, lambda _: self._cases.clear())
        self.evaluator.add_event_handler(Events.ITERATION_COMPLETED, self._on_val_iteration)
        self.evaluator.add_event_handler(Events.EPOCH_COMPLETED, self._on_validation)

    def _on_start(self, trainer: Engine) -> None:
        # a resumed run continues the curves of the epochs it kept
        path = self.output_dir / "history.json"
        if trainer.state.epoch > 0 and path.is_file():
            history = json.loads(path.read_text())
            self.history = {
                k: [e for e in history.get(k, []) if e[0] <= trainer.state.epoch] for k in ("loss", "metric")
            }

    def _on_train_iteration(self, trainer: Engine) -> None:
        out = trainer.state.output
        if isinstance(out, list):
            out = out[0] if out else {}
        if isinstance(out, Mapping) and "loss" in out:
            self._losses.append(float(out["loss"]))

    def _on_train_epoch(self, trainer: Engine) -> None:
        if self._losses:
            self.history["loss"].append([trainer.state.epoch, float(np.mean(self._losses))])
        self._losses = []
        self._write_curves()

    def _on_val_iteration(self, evaluator: Engine) -> None:
        if len(self._cases) >= self.num_overlays:
            return
        outputs = evaluator.state.output if isinstance(evaluator.state.output, list) else [evaluator.state.output]
        for out in outputs:
            if not isinstance(out, Mapping) or len(self._cases) >= self.num_overlays:
                continue
            image, label, pred = (out.get(k) for k in ("image", "label", "pred"))
            if image is None or label is None or pred is None:
                continue

            def _labels(x: torch.Tensor) -> np.ndarray:
                x = torch.as_tensor(x).detach().cpu()
                return (x.argmax(0) if x.shape[0] > 1 else x[0]).numpy()

            img = torch.as_tensor(image).detach().cpu()[0].float().numpy()
            lab, prd = _labels(label), _labels(pred)
            if img.ndim == 3:  # draw one axial-ish slice of a volume
                z = _overlay_slice(img, lab)
                img, lab, prd = img[..., z], lab[..., z], prd[..., z]
            self._cases.append((img, lab, prd))

    def _on_validation(self, evaluator: Engine) -> None:
        value = evaluator.state.metrics.get(self.metric_name)
        if value is not None:
            epoch = self.trainer.state.epoch if self.trainer is not None else len(self.history["metric"]) + 1
            self.history["metric"].append([epoch, float(value)])
        self._write_curves()
        self._write_overlays()

    def _write_curves(self) -> None:
        if not is_main_process():
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.output_dir.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
        for a, key, title in ((ax[0], "loss", "training loss"), (ax[1], "metric", self.metric_name)):
            if self.history[key]:
                xs, ys = zip(*self.history[key])
                a.plot(xs, ys, marker="o" if len(xs) < 30 else None)
            a.set_xlabel("epoch")
            a.set_title(title)
            a.grid(alpha=0.3)
        fig.tight_layout()
        _savefig_atomic(fig, self.output_dir / "curves.png")
        plt.close(fig)
        write_text_atomic(self.output_dir / "history.json", json.dumps(self.history, indent=1))

    def _write_overlays(self) -> None:
        if not is_main_process() or not self._cases:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        n = len(self._cases)
        fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.6 * n), squeeze=False)
        for row, (img, lab, prd) in enumerate(self._cases):
            for col, (title, mask) in enumerate((("image", None), ("ground truth", lab), ("prediction", prd))):
                a = axes[row][col]
                a.imshow(np.rot90(img), cmap="gray")
                if mask is not None:
                    a.imshow(np.rot90(np.ma.masked_equal(mask, 0)), cmap="tab10", vmin=0, vmax=9, alpha=0.5)
                a.set_title(title if row == 0 else "")
                a.axis("off")
        fig.suptitle(f"validation, epoch {self.trainer.state.epoch if self.trainer is not None else '?'}")
        fig.tight_layout()
        _savefig_atomic(fig, self.output_dir / "overlays.png")
        plt.close(fig)


def _savefig_atomic(fig: Any, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=90)
