"""The diffusion trainer: MONAI's SupervisedTrainer whose iteration evaluates the mask diffusion objective.

:class:`DiffusionTrainer` takes its inputs through MONAI's ``prepare_batch`` mechanism (:class:`DiffusionPrepareBatch`
by default) and calls ``network(image, target, context, **extra)``, which returns the loss terms
(:meth:`~bundle.diffusion.MaskDiffusion.loss`), so MONAI's handlers (stats, TensorBoard, validation, checkpoints, LR
schedules) and distributed data parallel work unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents, PrepareBatch
from monai.utils import CommonKeys as Keys
from monai.utils import convert_to_tensor

__all__ = ["DiffusionPrepareBatch", "DiffusionTrainer", "FolderPromptsPrepareBatch"]


class FolderPromptsPrepareBatch(PrepareBatch):
    """MONAI ``prepare_batch`` for a suite's validation: each image is asked for its own folder's classes only.

    A suite's model knows every structure of every folder. Validating a hippocampus crop with all of them costs a
    sampler pass per structure and lets ``liver`` compete for its voxels, which evaluation
    (``configs/evaluate.json``, prompted with the folder's classes) never does. This hands the segmenter
    (:class:`~bundle.diffusion.PromptedSegmenter`) the ``prompt_rows`` of the batch's folders.

    Args:
        class_values: the run's class values in prompt-row order (``list(class_names)``).
        label_maps: per folder name, ``{its value: the vocabulary's value}`` (:func:`~bundle.data.suite_label_maps`);
            empty for one folder, whose batches get every class.
        image_key: the image ``[B, C, *S]``.
        label_key: the label map ``[B, 1, *S]``.
        dataset_key: the entry naming each item's folder.
    """

    def __init__(
        self,
        class_values: list[int],
        label_maps: Mapping[str, Mapping[int, int]] | None = None,
        image_key: str = "image",
        label_key: str = "label",
        dataset_key: str = "dataset",
    ) -> None:
        self.rows = {int(v): i for i, v in enumerate(class_values)}
        self.folder_values = {str(k): sorted(int(v) for v in m.values()) for k, m in (label_maps or {}).items()}
        self.image_key, self.label_key, self.dataset_key = image_key, label_key, dataset_key

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict[str, torch.Tensor]]:
        """Moves a collated batch to ``device`` and names its prompts.

        Args:
            batchdata: the collated batch.
            device: the target device.
            non_blocking: non-blocking copies.
            kwargs: ``Tensor.to`` arguments (MONAI's ``to_kwargs``).

        Returns:
            ``(image, label, (), {"prompt_rows": [K']})``, or ``{}`` for batches of untagged items (every class).

        Raises:
            KeyError: naming the folder, when a batch's folder is not one of ``label_maps``.
        """
        image = batchdata[self.image_key].to(device=device, non_blocking=non_blocking, **kwargs)
        label = batchdata[self.label_key].to(device=device, non_blocking=non_blocking, **kwargs)
        folders = batchdata.get(self.dataset_key)
        if not self.folder_values or folders is None:
            return image, label, (), {}
        folders = [folders] if isinstance(folders, str) else list(folders)
        unknown = sorted({str(f) for f in folders} - set(self.folder_values))
        if unknown:
            raise KeyError(
                f"validation items of folder(s) {unknown} are not in the suite ({sorted(self.folder_values)})"
            )
        values = sorted({v for f in folders for v in self.folder_values[str(f)]})
        rows = torch.tensor([self.rows[v] for v in values], dtype=torch.long, device=image.device)
        return image, label, (), {"prompt_rows": rows}


class DiffusionPrepareBatch(PrepareBatch):
    """MONAI ``prepare_batch`` for mask diffusion: ``(image, target, (context,), extra)`` on the device.

    Args:
        image_key: the image ``[B, C, *S]``.
        target_key: the binary target ``[B, 1, *S]``, or ``[B, K, *S]`` for every class
            (:class:`~bundle.transforms.RandPromptd`).
        context_key: the prompt embedding ``[B, E]``, or ``[B, K, E]`` (:class:`~bundle.transforms.EmbedPromptd`).
        teacher_key: the SAM2 teacher's probabilities ``[B, 1, *S]``, handed on as ``teacher`` when present.
        teacher_weight_key: the teacher's trust weights ``[B, 1, *S]``, handed on as ``teacher_weight``.
        supervised_key: ``[B]`` flags, 0 for unlabelled cases (:class:`~bundle.transforms.TeacherTargetsd`), handed
            on as ``supervised``.
    """

    def __init__(
        self,
        image_key: str = "image",
        target_key: str = "target",
        context_key: str = "prompt_embedding",
        teacher_key: str = "teacher",
        teacher_weight_key: str = "teacher_weight",
        supervised_key: str = "supervised",
    ) -> None:
        self.image_key, self.target_key, self.context_key = image_key, target_key, context_key
        self.extra_keys = {"teacher": teacher_key, "teacher_weight": teacher_weight_key, "supervised": supervised_key}

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor], dict[str, torch.Tensor]]:
        """Moves a collated batch to ``device``.

        Args:
            batchdata: the collated batch.
            device: the target device.
            non_blocking: non-blocking copies.
            kwargs: ``Tensor.to`` arguments (MONAI's ``to_kwargs``).

        Returns:
            ``(image, target, (context,), extra)``: plain tensors (no MONAI metadata), ``extra`` holds the optional
            teacher entries present in the batch.

        Raises:
            KeyError: the batch lacks the image, the target or the prompt embedding.
        """
        missing = [k for k in (self.image_key, self.target_key, self.context_key) if k not in batchdata]
        if missing:
            raise KeyError(f"training batch lacks {missing}: the transforms must include RandPromptd and EmbedPromptd")

        def _to(key: str) -> torch.Tensor:
            # a MetaTensor would route each of the network's ~1300 operations per step through __torch_function__ to
            # carry metadata the loss never reads: 10-14 % of a SegOne training step
            return convert_to_tensor(batchdata[key], track_meta=False).to(device, non_blocking=non_blocking, **kwargs)

        extra = {name: _to(key).float() for name, key in self.extra_keys.items() if key in batchdata}
        return _to(self.image_key), _to(self.target_key), (_to(self.context_key).float(),), extra


class DiffusionTrainer(SupervisedTrainer):
    """SupervisedTrainer for mask diffusion: ``network(image, target, context, **extra)`` returns the loss terms.

    Args:
        args: :class:`~monai.engines.SupervisedTrainer`'s positional arguments.
        prepare_batch: MONAI ``prepare_batch`` returning ``(image, target, (context,), extra)``; default
            :class:`DiffusionPrepareBatch`.
        loss_function: not used (the network computes its loss); accepted for MONAI's signature.
        kwargs: :class:`~monai.engines.SupervisedTrainer`'s other arguments.

    The iteration output holds ``image``, ``label`` (the binary target), ``pred`` (the implied clean-mask
    probability), ``loss`` and the other terms the network reports (:class:`~bundle.diffusion.MaskDiffusion`'s
    ``l1``, ``dice``, ``bce``, ``competition`` and ``consistency``).

    Raises:
        NotImplementedError: ``accumulation_steps > 1`` or ``compile=True``, which this iteration does not support.
    """

    def __init__(
        self, *args: Any, prepare_batch: Callable | None = None, loss_function: Callable | None = None, **kwargs: Any
    ) -> None:
        super().__init__(
            *args, prepare_batch=prepare_batch or DiffusionPrepareBatch(), loss_function=loss_function, **kwargs
        )
        if self.accumulation_steps > 1 or self.compile:
            # this iteration replaces SupervisedTrainer's; say so rather than silently ignore the options
            raise NotImplementedError("DiffusionTrainer supports neither accumulation_steps > 1 nor compile=True")

    def _iteration(self, engine: DiffusionTrainer, batchdata: dict[str, Any]) -> dict[str, Any]:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        image, target, args, extra = engine.prepare_batch(
            batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs
        )
        engine.state.output = {Keys.IMAGE: image, Keys.LABEL: target}
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        if engine.amp and engine.scaler is not None:
            device = engine.state.device
            with torch.autocast(device.type if isinstance(device, torch.device) else str(device), **engine.amp_kwargs):
                terms = engine.network(image, target, *args, **extra)
        else:
            terms = engine.network(image, target, *args, **extra)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        loss = terms["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {float(loss)} at iteration {engine.state.iteration}")
        engine.state.output.update({Keys.PRED: terms["pred_mask"], Keys.LOSS: loss})
        # the loss terms the network reports (l1, dice, bce, competition, consistency), for handlers to log
        engine.state.output.update({k: v for k, v in terms.items() if k not in ("loss", "pred_mask")})
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        if engine.amp and engine.scaler is not None:
            engine.scaler.scale(loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
