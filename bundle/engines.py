"""Training and inference engines: MONAI's, with the diffusion objective and a batch that survives bad files.

- :class:`DiffusionTrainer` is a :class:`~monai.engines.SupervisedTrainer` whose iteration evaluates the mask
  diffusion objective (:class:`~bundle.diffusion.MaskDiffusion`) on ``(image, binary target, prompt embedding)``
  batches, so MONAI's handlers (stats, TensorBoard, validation, checkpoints, LR schedules) and distributed data
  parallel work unchanged.
- :class:`PromptBatch` hands requested prompt embeddings to the network through the inferer (for inference with
  prompts other than the default classes).
- :class:`SafeDataset` and :class:`FolderEvaluator` let inference over a folder go on after an unreadable or
  invalid image and report every failure at the end.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
from ignite.engine import Events
from monai.data import Dataset
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

__all__ = ["DiffusionTrainer", "PromptBatch", "SafeDataset", "FolderEvaluator", "FAILED_KEY"]

logger = logging.getLogger(__name__)

FAILED_KEY = "_segone_failed"


class DiffusionTrainer(SupervisedTrainer):
    """SupervisedTrainer for mask diffusion: ``network(image, target, context)`` returns the loss terms.

    Args:
        image_key, target_key, context_key: batch keys of the image ``[B, C, *S]``, the binary target ``[B, 1, *S]``
            and the prompt embedding ``[B, E]`` (as written by :class:`~bundle.transforms.RandPromptd` and
            :class:`~bundle.transforms.EmbedPromptd`).
        teacher_key, teacher_weight_key, supervised_key: optional batch keys of the SAM2 teacher's probabilities
            and trust weights ``[B, 1, *S]`` and of the labelled flags ``[B]`` (:class:`~bundle.teacher.TeacherTargetsd`),
            handed to the network's loss when present.
        All other arguments are :class:`~monai.engines.SupervisedTrainer`'s (``loss_function`` is not used: the
        network computes its loss).

    The iteration output holds ``image``, ``label`` (the binary target), ``pred`` (the implied clean-mask
    probability), ``loss`` and its terms ``l1``, ``dice`` and ``consistency``.
    """

    def __init__(
        self,
        *args: Any,
        image_key: str = "image",
        target_key: str = "target",
        context_key: str = "prompt_embedding",
        teacher_key: str = "teacher",
        teacher_weight_key: str = "teacher_weight",
        supervised_key: str = "supervised",
        loss_function: Optional[Callable] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, loss_function=loss_function, **kwargs)  # type: ignore[arg-type]
        if self.accumulation_steps > 1 or self.compile:
            # this iteration replaces SupervisedTrainer's; say so rather than silently ignore the options
            raise NotImplementedError("DiffusionTrainer supports neither accumulation_steps > 1 nor compile=True")
        self.image_key, self.target_key, self.context_key = image_key, target_key, context_key
        self.teacher_key, self.teacher_weight_key = teacher_key, teacher_weight_key
        self.supervised_key = supervised_key

    def _iteration(self, engine: "DiffusionTrainer", batchdata: Dict[str, Any]) -> Dict[str, Any]:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        missing = [k for k in (self.image_key, self.target_key, self.context_key) if k not in batchdata]
        if missing:
            raise KeyError(f"training batch lacks {missing}: the transforms must include RandPromptd and EmbedPromptd")
        device, nb = engine.state.device, engine.non_blocking
        image = torch.as_tensor(batchdata[self.image_key]).to(device, non_blocking=nb)
        target = torch.as_tensor(batchdata[self.target_key]).to(device, non_blocking=nb)
        context = torch.as_tensor(batchdata[self.context_key]).to(device, non_blocking=nb).float()
        extra = {}
        if self.teacher_key in batchdata:  # SAM2 teacher targets (bundle.teacher.TeacherTargetsd / SelectTeacherd)
            extra["teacher"] = torch.as_tensor(batchdata[self.teacher_key]).to(device, non_blocking=nb).float()
            if self.teacher_weight_key in batchdata:
                extra["teacher_weight"] = torch.as_tensor(batchdata[self.teacher_weight_key]).to(device).float()
        if self.supervised_key in batchdata:  # 0 for unlabelled cases, which train through the teacher term only
            extra["supervised"] = torch.as_tensor(batchdata[self.supervised_key]).to(device).float()
        engine.state.output = {Keys.IMAGE: image, Keys.LABEL: target}
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        if engine.amp and engine.scaler is not None:
            with torch.autocast(device.type if isinstance(device, torch.device) else str(device), **engine.amp_kwargs):
                terms = engine.network(image, target, context, **extra)
        else:
            terms = engine.network(image, target, context, **extra)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        loss = terms["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {float(loss)} at iteration {engine.state.iteration}")
        engine.state.output.update(
            {Keys.PRED: terms["pred_mask"], Keys.LOSS: loss, "l1": terms["l1"], "dice": terms["dice"],
             "consistency": terms["consistency"]}
        )
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


class PromptBatch:
    """``prepare_batch`` that passes fixed prompt embeddings to the network: ``inferer(image, net, prompt_embeddings=E)``.

    With ``embeddings=None`` it is MONAI's default (the network's own class prompts).
    """

    def __init__(self, embeddings: Optional[torch.Tensor] = None, image_key: str = "image", label_key: str = "label"):
        self.embeddings = embeddings
        self.image_key, self.label_key = image_key, label_key

    def __call__(
        self, batchdata: Mapping[str, Any], device: Optional[torch.device] = None, non_blocking: bool = False, **kwargs: Any
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor], tuple, dict]:
        image = torch.as_tensor(batchdata[self.image_key]).to(device, non_blocking=non_blocking)
        label = batchdata.get(self.label_key)
        if label is not None:
            label = torch.as_tensor(label).to(device, non_blocking=non_blocking)
        extra = {} if self.embeddings is None else {"prompt_embeddings": self.embeddings.to(device)}
        return image, label, (), extra


class SafeDataset(Dataset):
    """A dataset whose items, when loading or preprocessing fails, become a record of the failure.

    The failed item is ``{"image": <the path>, FAILED_KEY: "<file>: <problem>"}``; :class:`FolderEvaluator`
    logs it, goes on, and reports all failures at the end.
    """

    def _transform(self, index: int) -> Any:
        item = self.data[index]
        try:
            return super()._transform(index)
        except Exception as e:  # any bad input: unreadable, NaN, wrong dimensions
            root = e
            while root.__cause__ is not None:  # MONAI wraps transform errors; the innermost names the problem
                root = root.__cause__
            name = str(item.get("image", item)) if isinstance(item, Mapping) else str(item)
            message = str(root)
            if message.startswith(f"{name}: "):  # the file is named once, in front
                message = message[len(name) + 2 :]
            return {"image": name, FAILED_KEY: f"{type(root).__name__}: {message}"}


class FolderEvaluator(SupervisedEvaluator):
    """SupervisedEvaluator for inference over many files: a failure skips that file, and all are reported at the end.

    Expects ``batch_size=1`` (one file per iteration). After the run, ``failures`` lists ``(file, problem)``; when
    any file failed and ``raise_on_failure`` is set, the run ends with an error that lists them (so the command's
    exit status is non-zero) after every other file has been written.
    """

    def __init__(self, *args: Any, raise_on_failure: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.raise_on_failure = raise_on_failure
        self.failures: List[Tuple[str, str]] = []
        self.succeeded = 0
        self.add_event_handler(Events.COMPLETED, self._report)

    def _iteration(self, engine: SupervisedEvaluator, batchdata: Dict[str, Any]) -> Dict:  # type: ignore[override]
        if FAILED_KEY in batchdata:
            problem, name = batchdata[FAILED_KEY], batchdata.get("image", "?")
            problem = problem[0] if isinstance(problem, (list, tuple)) else problem
            name = name[0] if isinstance(name, (list, tuple)) else name
            self.failures.append((str(name), str(problem)))
            logger.error("skipped %s", problem)
            return {}
        meta = getattr(batchdata.get("image"), "meta", {}) or {}
        files = meta.get("filename_or_obj", ["?"])
        name = files[0] if isinstance(files, (list, tuple)) else files
        try:
            output = super()._iteration(engine, batchdata)
        except Exception as e:
            self.failures.append((str(name), f"{type(e).__name__}: {e}"))
            logger.exception("failed on %s", name)
            return {}
        self.succeeded += 1
        return output

    def _report(self, engine: SupervisedEvaluator) -> None:
        total = self.succeeded + len(self.failures)
        logger.info("%d of %d image(s) processed, %d failed", self.succeeded, total, len(self.failures))
        if self.failures:
            lines = "\n".join(f"  {f}: {p}" for f, p in self.failures)
            if self.raise_on_failure:
                raise RuntimeError(f"{len(self.failures)} of {total} image(s) failed:\n{lines}")
            logger.error("%d of %d image(s) failed:\n%s", len(self.failures), total, lines)
