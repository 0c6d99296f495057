"""Inference over a folder that goes on after a bad file, and the route of prompt embeddings to the network."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
from ignite.engine import Events
from monai.data import Dataset
from monai.engines import SupervisedEvaluator

__all__ = [
    "prompt_kwargs",
    "prompted_inference",
    "FAILED_KEY",
    "failure_reason",
    "PromptBatch",
    "SafeDataset",
    "FolderEvaluator",
]

logger = logging.getLogger(__name__)


FAILED_KEY = "_segone_failed"


def _unwrap(exc: BaseException) -> BaseException:
    """The error under MONAI's ``applying transform`` wrappers (an error raised ``from`` another is kept: it says
    more, e.g. which file a failed write was for)."""
    while exc.__cause__ is not None and isinstance(exc, RuntimeError) and str(exc).startswith("applying transform"):
        exc = exc.__cause__
    return exc


def failure_reason(exc: BaseException) -> str:
    """The cause of an error as ``"<type>: <message>"``.

    MONAI's ``Compose`` wraps a transform's error in ``RuntimeError: applying transform <Compose object ...>``; the
    error under these wrappers names the problem (``OSError: [Errno 28] <file>: writing <output> failed: No space
    left on device``).

    Args:
        exc: the error caught.

    Returns:
        The type and message of the error under MONAI's wrappers.
    """
    root = _unwrap(exc)
    return f"{type(root).__name__}: {root}"


def prompt_kwargs(prompt_embeddings: torch.Tensor | None, device: str | torch.device | None = None) -> dict[str, Any]:
    """The one route by which requested prompts reach the network: ``inferer(image, network, **prompt_kwargs(E))``.

    The inference network (:class:`~bundle.diffusion.PromptedSegmenter`) takes ``prompt_embeddings`` ``[K, E]``; a
    sliding-window inferer hands keyword arguments on to it for every window.

    Args:
        prompt_embeddings: ``[K, E]`` embeddings (:attr:`bundle.text.PromptSelection.embeddings`), or ``None`` for
            the network's own class prompts.
        device: where the network runs.

    Returns:
        ``{}`` or ``{"prompt_embeddings": E}`` on ``device``.
    """
    return {} if prompt_embeddings is None else {"prompt_embeddings": prompt_embeddings.to(device)}


@torch.no_grad()
def prompted_inference(
    inferer: Callable[..., torch.Tensor],
    network: torch.nn.Module,
    image: torch.Tensor,
    prompt_embeddings: torch.Tensor | None = None,
) -> torch.Tensor:
    """Class probabilities of a batch of images for the requested prompts, outside an engine.

    Args:
        inferer: the bundle's inferer (sliding windows).
        network: the inference network.
        image: ``[B, C, *S]`` on the network's device.
        prompt_embeddings: ``[K, E]``, or ``None`` for the network's own class prompts.

    Returns:
        ``[B, 1 + K, *S]`` probabilities (background first).
    """
    return inferer(image, network, **prompt_kwargs(prompt_embeddings, image.device))


class PromptBatch:
    """MONAI ``prepare_batch`` that passes requested prompt embeddings to the network (see :func:`prompt_kwargs`).

    Args:
        embeddings: ``[K, E]``, or ``None`` for the network's own class prompts (MONAI's default behaviour).
        image_key: the image entry.
        label_key: the label entry (optional in the batch).
    """

    def __init__(self, embeddings: torch.Tensor | None = None, image_key: str = "image", label_key: str = "label"):
        self.embeddings = embeddings
        self.image_key, self.label_key = image_key, label_key

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None, tuple, dict]:
        """``(image, label, (), prompt kwargs)`` on ``device``.

        Args:
            batchdata: the collated batch.
            device: the target device.
            non_blocking: non-blocking copies.
            kwargs: unused ``Tensor.to`` arguments.

        Returns:
            The inputs of MONAI's evaluator iteration.
        """
        image = torch.as_tensor(batchdata[self.image_key]).to(device, non_blocking=non_blocking)
        label = batchdata.get(self.label_key)
        if label is not None:
            label = torch.as_tensor(label).to(device, non_blocking=non_blocking)
        return image, label, (), prompt_kwargs(self.embeddings, device)


class SafeDataset(Dataset):
    """A dataset whose items, when loading or preprocessing fails, become a record of the failure.

    The failed item is ``{"image": <the path>, FAILED_KEY: "<error type>: <problem>"}``; :class:`FolderEvaluator`
    logs it with the file's name, goes on, and reports all failures at the end.

    Args:
        data: the datalist.
        transform: the preprocessing.
    """

    def _transform(self, index: int) -> Any:
        item = self.data[index]
        try:
            return super()._transform(index)
        except Exception as e:  # any bad input: unreadable, NaN, wrong dimensions
            root = _unwrap(e)  # MONAI wraps transform errors; the error under the wrappers names the problem
            name = str(item.get("image", item)) if isinstance(item, Mapping) else str(item)
            message = str(root)
            if message.startswith(f"{name}: "):  # the file is named once, in front
                message = message[len(name) + 2 :]
            return {"image": name, FAILED_KEY: f"{type(root).__name__}: {message or 'no message'}"}


class FolderEvaluator(SupervisedEvaluator):
    """SupervisedEvaluator for inference over many files: a failure skips that file, and all are reported at the end.

    Expects ``batch_size=1`` (one file per iteration). After the run, ``failures`` lists ``(file, problem)``; when
    any file failed and ``raise_on_failure`` is set, the run ends with an error that lists them (so the command's
    exit status is non-zero) after every other file has been written. Each failure is logged and reported with
    the file's name and the root cause of the error (not MONAI's ``applying transform`` wrapper).

    Args:
        args: :class:`~monai.engines.SupervisedEvaluator`'s arguments.
        raise_on_failure: end with an error listing the failures.
        kwargs: :class:`~monai.engines.SupervisedEvaluator`'s keyword arguments.
    """

    def __init__(self, *args: Any, raise_on_failure: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.raise_on_failure = raise_on_failure
        self.failures: list[tuple[str, str]] = []
        self.succeeded = 0
        self.add_event_handler(Events.COMPLETED, self._report)

    def _iteration(self, engine: SupervisedEvaluator, batchdata: dict[str, Any]) -> dict:  # type: ignore[override]
        if FAILED_KEY in batchdata:
            problem, name = batchdata[FAILED_KEY], batchdata.get("image", "?")
            problem = problem[0] if isinstance(problem, (list, tuple)) else problem
            name = name[0] if isinstance(name, (list, tuple)) else name
            self.failures.append((str(name), str(problem)))
            logger.error("skipped %s: %s", name, problem)
            return {}
        meta = getattr(batchdata.get("image"), "meta", {}) or {}
        files = meta.get("filename_or_obj", ["?"])
        name = files[0] if isinstance(files, (list, tuple)) else files
        try:
            output = super()._iteration(engine, batchdata)
        except Exception as e:  # noqa: BLE001 - one file failing never stops the folder
            reason = failure_reason(e)
            self.failures.append((str(name), reason))
            logger.error("failed on %s: %s", name, reason, exc_info=e)
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
