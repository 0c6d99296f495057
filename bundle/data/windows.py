"""Windows shaped by voxel spacing: thick-slice volumes get flat, wide windows of the same voxel count.

A 48x64x48 window suits a near-isotropic crop of the hippocampus. On a cine heart of ten 10-mm slices it holds 38
slices of padding and sees 72x96 mm in-plane, less than the heart. nnU-Net plans its patch from each data set's
spacing for the same reason. Here the rule is per image, so training, validation and inference of any volume agree:
axes whose spacing is at least ``thick_ratio`` times the finest get the smallest window the network accepts, and
the other axes share the voxels that frees.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["WindowBatchSampler", "add_windows", "image_spacing", "plan_window", "window_groups"]


def plan_window(
    spacing: Sequence[float], roi_size: Sequence[int], multiple: int = 16, thick_ratio: float = 3.0
) -> tuple[int, ...]:
    """The window for an image of this voxel spacing.

    Args:
        spacing: the image's voxel spacing in mm, one value per spatial axis (in the network's axis order).
        roi_size: the window of near-isotropic images; its voxel count is the budget of every window.
        multiple: every window size is a multiple of this (the network's total downsampling).
        thick_ratio: an axis is thick when its spacing is at least this times the finest; ``0`` turns the rule off.

    Returns:
        ``roi_size`` when no axis is thick; otherwise ``multiple`` voxels on each thick axis and, on the others, the
        largest equal multiple of ``multiple`` whose window holds no more voxels than ``roi_size``'s.
        ``(10, 1.5, 1.5)`` mm with ``(48, 64, 48)`` gives ``(16, 96, 96)``.

    Raises:
        ValueError: when ``spacing`` and ``roi_size`` differ in length, a spacing is not positive and finite, or
            ``roi_size`` is not a multiple of ``multiple``.
    """
    roi = tuple(int(r) for r in roi_size)
    sp = [float(s) for s in spacing]
    if len(sp) != len(roi):
        raise ValueError(f"spacing {tuple(sp)} has {len(sp)} axes, roi_size {roi} has {len(roi)}")
    if not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"voxel spacing must be positive and finite, got {tuple(sp)}")
    if multiple < 1 or any(r % multiple for r in roi):
        raise ValueError(f"roi_size {roi} is not a multiple of {multiple}")
    if thick_ratio <= 0:
        return roi
    thick = [s >= thick_ratio * min(sp) for s in sp]
    if not any(thick) or all(thick):
        return roi
    budget = math.prod(roi) // multiple ** sum(thick)
    n_thin = len(sp) - sum(thick)
    side = max(multiple, int(budget ** (1.0 / n_thin) + 1e-6) // multiple * multiple)
    return tuple(multiple if t else side for t in thick)


def image_spacing(path: str) -> tuple[float, ...]:
    """An image file's voxel spacing in the bundle's RAS axis order, from its header alone.

    Args:
        path: a NIfTI file (what training data sets hold).

    Returns:
        One spacing per spatial axis, as ``Orientationd(axcodes="RAS")`` orders them.

    Raises:
        ValueError: naming the file, when its header cannot be read.
    """
    import nibabel as nib

    try:
        img = nib.load(str(path))
        affine = np.asarray(img.affine, dtype=float)
        zooms = img.header.get_zooms()
    except Exception as e:  # any unreadable header: the error names the file
        raise ValueError(f"{path}: cannot read the image header for its voxel spacing ({e})") from e
    dims = min(len(zooms), 3)
    ornt = nib.io_orientation(affine[: dims + 1, : dims + 1] if dims < 3 else affine)
    out = [0.0] * dims
    for axis, (target, _) in enumerate(ornt[:dims]):
        out[int(target)] = float(zooms[axis])
    return tuple(out)


def add_windows(
    datalist: Sequence[Mapping[str, Any]],
    roi_size: Sequence[int],
    multiple: int = 16,
    thick_ratio: float = 3.0,
    image_key: str = "image",
    window_key: str = "window",
) -> list[dict[str, Any]]:
    """The datalist with each item's planned window (:func:`plan_window` of its image's spacing).

    Args:
        datalist: items with an image path.
        roi_size: the window of near-isotropic images.
        multiple: the network's total downsampling.
        thick_ratio: see :func:`plan_window`; ``0`` returns the items unchanged (no file is read).
        image_key: the image path entry.
        window_key: the entry written.

    Returns:
        New items (the input is not modified), each with ``window_key``: a list of ints.
    """
    if thick_ratio <= 0:
        return [dict(item) for item in datalist]
    return [
        {**item, window_key: list(plan_window(image_spacing(item[image_key]), roi_size, multiple, thick_ratio))}
        for item in datalist
    ]


def window_groups(datalist: Sequence[Mapping[str, Any]], window_key: str = "window") -> list[int]:
    """A group number per item: items share one when their windows are equal (items without a window share one).

    Args:
        datalist: items, with or without ``window_key``.
        window_key: the planned window entry.

    Returns:
        One group number per item, numbered in order of first appearance.
    """
    seen: dict[tuple, int] = {}
    return [seen.setdefault(tuple(item.get(window_key) or ()), len(seen)) for item in datalist]


class WindowBatchSampler(Sampler[list[int]]):
    """Batches whose items share one window, so crops of different shapes never meet in a collated batch.

    Without weights every item is used once per epoch: each group is shuffled and cut into whole batches (the rest
    dropped, as ``drop_last``; a group smaller than a batch is one batch), and the batches are shuffled. With
    weights (``bundle.data.folder_sampling_weights``) each batch draws its first item by weight from all items and
    the rest by weight, with replacement, from that item's group, so each item is drawn as often as by MONAI's
    weighted sampler. Each epoch reshuffles from ``seed``, the epoch number and the replica's rank; across replicas
    (multi-GPU) the batches differ and every replica gets the same number.

    Args:
        groups: a group number per item (:func:`window_groups`).
        batch_size: items per batch.
        weights: sampling weights per item, or ``None`` for every item once an epoch.
        num_batches: batches per epoch and replica for weighted sampling (default: items // (batch_size x replicas)).
        seed: the shuffling seed.
        num_replicas: processes sharing the data set.
        rank: this process's rank.
    """

    def __init__(
        self,
        groups: Sequence[int],
        batch_size: int,
        weights: Sequence[float] | None = None,
        num_batches: int | None = None,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not one of {num_replicas} replicas")
        self.groups = torch.as_tensor(list(groups), dtype=torch.long)
        if weights is not None and len(weights) != len(self.groups):
            raise ValueError(f"{len(weights)} weights for {len(self.groups)} items")
        self.weights = None if weights is None else torch.as_tensor(list(weights), dtype=torch.double)
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.epoch = 0
        self.members = [torch.nonzero(self.groups == g).flatten() for g in range(int(self.groups.max()) + 1)]
        if weights is None:
            whole = sum(max(1, len(m) // self.batch_size) for m in self.members)
            self.num_batches = -(-whole // self.num_replicas)  # padded, as DistributedSampler(even_divisible=True)
        elif num_batches is not None:
            self.num_batches = int(num_batches)
        else:  # as MONAI's (distributed) weighted sampler: the items, shared by the replicas, in batches
            self.num_batches = max(1, -(-len(self.groups) // self.num_replicas) // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch whose batches the next iteration gives (each iteration otherwise moves to the next).

        Args:
            epoch: the epoch number.
        """
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed + 1_000_003 * self.epoch)
        self.epoch += 1
        if self.weights is None:
            batches = []
            for m in self.members:
                order = m[torch.randperm(len(m), generator=g)]
                starts = range(0, len(order) - self.batch_size + 1, self.batch_size)
                # a group smaller than a batch still trains, as one smaller batch
                batches += [order[i : i + self.batch_size] for i in starts] or [order]
            order = torch.randperm(len(batches), generator=g)
            needed = self.num_replicas * self.num_batches
            order = order.repeat(-(-needed // len(order)))[:needed]  # replicas padded alike, as DistributedSampler
            for b in order[self.rank :: self.num_replicas].tolist():
                yield batches[b].tolist()
            return
        g.manual_seed(g.initial_seed() + 7919 * self.rank)
        for _ in range(self.num_batches):
            first = int(torch.multinomial(self.weights, 1, generator=g))
            if self.batch_size == 1:
                yield [first]
                continue
            m = self.members[int(self.groups[first])]
            rest = m[torch.multinomial(self.weights[m], self.batch_size - 1, replacement=True, generator=g)]
            yield [first] + rest.tolist()
