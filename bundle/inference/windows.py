"""Sliding windows shaped by each volume's voxel spacing (:func:`bundle.data.plan_window`)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.inferers import SlidingWindowInferer

from bundle.data.windows import plan_window

__all__ = ["SpacingWindowInferer", "volume_spacing"]


def volume_spacing(image: torch.Tensor) -> tuple[float, ...] | None:
    """The voxel spacing of a ``[B, C, *S]`` batch, in its array's axis order, from its affine.

    Args:
        image: a batch; only a MONAI ``MetaTensor`` carries an affine.

    Returns:
        One spacing per spatial axis, or ``None`` for a plain tensor.

    Raises:
        ValueError: when the images of the batch have different spacings (their windows would differ).
    """
    if not isinstance(image, MetaTensor):
        return None
    dims = image.dim() - 2
    affine = image.affine
    affines = affine if affine.dim() == 3 else affine[None]
    spacings = {tuple(round(float(s), 6) for s in affine_to_spacing(a, r=dims)) for a in affines}
    if len(spacings) > 1:
        raise ValueError(
            f"the batch's images have different voxel spacings {sorted(spacings)}: infer them one at a time"
        )
    return next(iter(spacings))


class SpacingWindowInferer(SlidingWindowInferer):
    """MONAI's ``SlidingWindowInferer`` whose window follows each volume's spacing: ``roi_size`` for near-isotropic
    volumes, a flat, wide window of the same voxel count for thick slices (:func:`bundle.data.plan_window`), so a
    model trained with :func:`bundle.data.add_windows` sees at inference the windows it was trained on.

    Args:
        roi_size: the window of near-isotropic volumes.
        multiple: every window size is a multiple of this (the network's total downsampling).
        thick_ratio: an axis is thick when its spacing is at least this times the finest; ``0`` keeps ``roi_size``
            for every volume (MONAI's inferer).
        args: ``SlidingWindowInferer``'s other arguments.
        kwargs: ``SlidingWindowInferer``'s other keyword arguments.
    """

    def __init__(
        self, roi_size: Sequence[int], *args: Any, multiple: int = 16, thick_ratio: float = 0.0, **kwargs: Any
    ) -> None:
        super().__init__(roi_size, *args, **kwargs)
        self.multiple, self.thick_ratio = int(multiple), float(thick_ratio)

    def window_for(self, inputs: torch.Tensor) -> tuple[int, ...]:
        """The window for this batch.

        Args:
            inputs: ``[B, C, *S]``; a plain tensor (no spacing) gets ``roi_size``.

        Returns:
            The window's size per spatial axis.
        """
        spacing = volume_spacing(inputs) if self.thick_ratio > 0 else None
        if spacing is None:
            return tuple(int(r) for r in self.roi_size)
        return plan_window(spacing, self.roi_size, self.multiple, self.thick_ratio)

    def __call__(  # type: ignore[override]
        self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        """Sliding-window inference with this batch's window.

        Args:
            inputs: ``[B, C, *S]``.
            network: the model.
            args: passed to ``network``.
            kwargs: passed to ``network``.

        Returns:
            MONAI ``SlidingWindowInferer``'s output.
        """
        window = self.window_for(inputs)
        if window == tuple(self.roi_size):
            return super().__call__(inputs, network, *args, **kwargs)
        inferer = copy.copy(self)  # the window is this call's, not the instance's
        inferer.roi_size = window
        return SlidingWindowInferer.__call__(inferer, inputs, network, *args, **kwargs)
