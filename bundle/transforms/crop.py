"""A training crop whose size each item sets (:func:`bundle.data.add_windows`: flat windows for thick slices)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from monai.config import KeysCollection
from monai.transforms import MapTransform, RandCropByLabelClassesd, Randomizable, RandSpatialCropd, SpatialPadd

__all__ = ["RandWindowCropd"]


class RandWindowCropd(Randomizable, MapTransform):
    """Pads and crops every key to the item's own window: MONAI's ``SpatialPadd`` then ``RandSpatialCropd``
    (``sampling="random"``) or ``RandCropByLabelClassesd`` (``"classes"``: centred on a voxel of a class drawn
    uniformly, background included), at the size the item's ``window_key`` names.

    Items of different windows give crops of different shapes, so the data loader batches them by window
    (:class:`bundle.data.WindowBatchSampler`).

    Args:
        keys: the entries cropped together (image, label, teacher maps).
        roi_size: the window of items without ``window_key``.
        sampling: ``"random"`` or ``"classes"``.
        label_key: the label map ``"classes"`` centres on.
        num_classes: classes of ``label_key`` including background, for ``"classes"``.
        window_key: the item's window entry.
        allow_missing_keys: skip keys an item lacks.
    """

    def __init__(
        self,
        keys: KeysCollection,
        roi_size: Sequence[int],
        sampling: str = "random",
        label_key: str = "label",
        num_classes: int | None = None,
        window_key: str = "window",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if sampling not in ("random", "classes"):
            raise ValueError(f"sampling must be 'random' or 'classes', got {sampling!r}")
        if sampling == "classes" and not num_classes:
            raise ValueError("sampling 'classes' needs num_classes")
        self.roi_size = tuple(int(r) for r in roi_size)
        self.sampling, self.label_key, self.num_classes = sampling, label_key, num_classes
        self.window_key = window_key
        self._ops: dict[tuple[int, ...], tuple[SpatialPadd, MapTransform]] = {}  # per window, built once

    def set_random_state(self, seed: int | None = None, state: Any = None) -> RandWindowCropd:
        """Sets the random state that every window's crop draws from.

        Args:
            seed: a seed for a new state.
            state: a ``numpy.random.RandomState`` to use.

        Returns:
            This transform.
        """
        super().set_random_state(seed, state)
        self._ops.clear()  # the crops built so far drew from the old state
        return self

    def randomize(self, data: Any = None) -> None:
        """Draws nothing itself: the crops made in ``__call__`` draw from this transform's random state.

        Args:
            data: unused.
        """

    def _window(self, d: Mapping[Hashable, Any]) -> tuple[int, ...]:
        window = d.get(self.window_key)
        if window is None:
            return self.roi_size
        size = tuple(int(s) for s in (window.tolist() if hasattr(window, "tolist") else window))
        if len(size) != len(self.roi_size):
            raise ValueError(f"window {size} has {len(size)} axes, roi_size {self.roi_size} has {len(self.roi_size)}")
        return size

    def _crop_ops(self, size: tuple[int, ...]) -> tuple[SpatialPadd, MapTransform]:
        if size not in self._ops:
            keys, missing = list(self.keys), self.allow_missing_keys
            pad = SpatialPadd(keys, spatial_size=size, allow_missing_keys=missing)
            if self.sampling == "random":
                crop = RandSpatialCropd(keys, roi_size=size, random_size=False, allow_missing_keys=missing)
            else:
                crop = RandCropByLabelClassesd(
                    keys,
                    label_key=self.label_key,
                    spatial_size=size,
                    num_classes=self.num_classes,
                    num_samples=1,
                    warn=False,
                    allow_missing_keys=missing,
                )
            crop.set_random_state(state=self.R)
            self._ops[size] = (pad, crop)
        return self._ops[size]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        pad, crop = self._crop_ops(self._window(d))
        out = crop(pad(d))
        return out[0] if isinstance(out, list) else out
