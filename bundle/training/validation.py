"""Up-front checks of the training inputs: every image and label of the train and validation datalists is loaded
once, before the first epoch, and every bad file is named in one error.

:class:`CheckedCacheDataset` is MONAI's ``CacheDataset`` whose cache fill is the check: it applies the deterministic
transforms to every item (the cached ones are kept, the others only checked), never lets an exception escape a
worker thread (an exception in ``CacheDataset``'s thread pool left a thread running a transform while the process
exited: ``terminate called without an active exception``, SIGABRT), checks label values against the classes, and
records each bad item's file and problem. :func:`check_inputs`, first in train.json's run lists, raises one
:class:`InputError` listing the problems of all datasets, before anything is written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from multiprocessing.pool import ThreadPool
from pathlib import Path
from typing import Any

import torch
from monai.data import CacheDataset

from bundle.utils.metadata import source_name

__all__ = ["CheckedCacheDataset", "InputError", "check_inputs", "describe_failure", "label_value_problem"]

logger = logging.getLogger(__name__)

# file entries of a datalist item named in messages
FILE_KEYS = ("image", "label")


class InputError(ValueError):
    """Training inputs that cannot be used; the message lists every bad file and its problem."""


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost cause of ``exc`` (MONAI wraps a transform's error in ``RuntimeError("applying transform")``)."""
    seen = {id(exc)}
    while True:
        nxt = exc.__cause__ or exc.__context__
        if nxt is None or id(nxt) in seen:
            return exc
        seen.add(id(nxt))
        exc = nxt


def describe_failure(item: Any, exc: BaseException) -> str:
    """One line naming the file of a datalist item and why it could not be loaded.

    Args:
        item: the datalist item (``{"image": path, "label": path, ...}``).
        exc: what loading it raised.

    Returns:
        ``"<file>: <problem>"``; the file is the one the problem names (e.g. the label whose shape differs), else
        the item's image, else its label; the problem is the innermost cause's message.
    """
    root = _root_cause(exc)
    problem = str(root).strip() or type(root).__name__
    if not isinstance(root, ValueError):
        problem = f"{type(root).__name__}: {problem}"
    files = [str(item[k]) for k in FILE_KEYS if isinstance(item, Mapping) and isinstance(item.get(k), (str, Path))]
    if not files:
        return problem
    if any(problem.startswith(f) for f in files):
        return problem
    named = [f for f in files if f in problem] or [f for f in files if Path(f).name in problem] or files
    return f"{named[0]}: {problem}"


def label_value_problem(
    item: Mapping[Hashable, Any], class_values: Iterable[int] | None, label_key: str = "label"
) -> str | None:
    """Checks that a loaded label holds only background (0) and the classes' values.

    Args:
        item: a loaded datalist item.
        class_values: the label values of the classes (``channel_def`` of metadata.json, background excluded);
            ``None`` skips the check.
        label_key: the label entry; an item without it (an unlabelled case) passes.

    Returns:
        ``None`` when the label is fine, else ``"<label file>: <problem>"``.
    """
    if class_values is None or label_key not in item or item[label_key] is None:
        return None
    label = torch.as_tensor(item[label_key])
    name = source_name(item, label_key)
    if label.is_floating_point():
        if not torch.isfinite(label).all():
            return f"{name}: label has NaN or infinite values"
        if not torch.equal(label, label.round()):
            return f"{name}: label has non-integer values (a label map holds class values)"
    allowed = {0, *(int(v) for v in class_values)}
    found = [int(v) for v in torch.unique(label).tolist()]
    bad = [v for v in found if v not in allowed]
    if bad:
        return f"{name}: label value(s) {bad[:8]} not among the classes {sorted(allowed)} (metadata.json channel_def)"
    return None


class CheckedCacheDataset(CacheDataset):
    """A ``CacheDataset`` whose cache fill checks every item and names each bad file instead of raising.

    Every item of ``data`` goes through the deterministic transforms at construction (the first ``cache_num``
    are kept as the cache, the rest only checked), in the calling thread (``num_workers`` <= 1) or in a thread pool
    whose workers never raise. Problems are in :attr:`problems`; :func:`check_inputs` raises them, and any access
    to an item of a dataset with problems raises them too.

    Args:
        data: the datalist.
        transform: the transforms (the deterministic ones, up to the first random one, are cached).
        cache_rate: fraction of ``data`` cached.
        num_workers: threads filling the cache (0 or 1: the calling thread).
        class_values: the label values of the classes, checked in every label (``None``: unchecked).
        label_key: the label entry of the items.
        name: the dataset's name in messages (``"train"``, ``"validate"``).
        progress: show a progress bar while filling.
        kwargs: further ``CacheDataset`` arguments.
    """

    def __init__(
        self,
        data: Sequence,
        transform: Sequence[Callable] | Callable | None = None,
        cache_rate: float = 1.0,
        num_workers: int | None = 0,
        class_values: Iterable[int] | None = None,
        label_key: str = "label",
        name: str = "data",
        progress: bool = True,
        **kwargs: Any,
    ) -> None:
        self.class_values = None if class_values is None else [int(v) for v in class_values]
        self.label_key = label_key
        self.name = name
        self.problems: list[str] = []
        super().__init__(
            data=data, transform=transform, cache_rate=cache_rate, num_workers=num_workers, progress=progress, **kwargs
        )

    def _checked_item(self, idx: int) -> tuple[Any, str | None]:
        try:
            item = self._load_cache_item(idx)
        except Exception as e:  # any failure of any transform: named, never raised in a worker thread
            return None, describe_failure(self.data[idx], e)
        try:
            problem = label_value_problem(item, self.class_values, self.label_key) if isinstance(item, dict) else None
        except Exception as e:
            problem = describe_failure(self.data[idx], e)
        return (None, problem) if problem else (item, None)

    def _fill_cache(self, indices: Sequence[int] | None = None) -> list:
        indices = list(range(self.cache_num)) if indices is None else list(indices)
        cached = set(indices)
        todo = indices + [i for i in range(len(self.data)) if i not in cached]  # the rest is only checked
        if not todo:
            return []
        if self.num_workers is not None and self.num_workers <= 1:
            results = [self._checked_item(i) for i in self._progress(todo, todo)]
        else:
            with ThreadPool(self.num_workers) as pool:
                results = list(self._progress(pool.imap(self._checked_item, todo), todo))
        self.problems = [f"{self.name}: {p}" for _, p in results if p]
        return [item for item, _ in results[: len(indices)]]

    def _progress(self, iterable: Iterable, todo: Sequence[int]) -> Iterable:
        if not self.progress:
            return iterable
        try:
            from tqdm import tqdm
        except ImportError:
            return iterable
        return tqdm(iterable, total=len(todo), desc=f"Loading and checking {self.name} data")

    def _transform(self, index: int) -> Any:
        if self.problems:
            raise InputError(_report(self.problems, len(self.data)))
        return super()._transform(index)


def _report(problems: Sequence[str], num_cases: int) -> str:
    lines = "\n".join(f"  - {p}" for p in problems)
    return (
        f"{len(problems)} of {num_cases} training and validation case(s) cannot be used; fix or remove them "
        f"from the datalist and run again (nothing was trained or written):\n{lines}"
    )


def check_inputs(*datasets: Any) -> int:
    """Raises one error naming every bad file of the given datasets; run before the first epoch.

    Args:
        datasets: the training and validation datasets; those with ``problems`` (:class:`CheckedCacheDataset`)
            contribute theirs, others are skipped.

    Returns:
        The number of cases checked.

    Raises:
        InputError: listing ``"<dataset>: <file>: <problem>"`` for every bad case of every dataset.
    """
    problems: list[str] = []
    total = 0
    for ds in datasets:
        if isinstance(ds, CheckedCacheDataset):
            problems += ds.problems
            total += len(ds.data)
    if problems:
        raise InputError(_report(problems, total))
    logger.info("checked %d training and validation case(s): all usable", total)
    return total
