"""The "absent" rule: an answer whose whole volume is at most a threshold is no answer (the structure is absent).

A text-prompted model answers every prompt; a faint, small response to a prompt of a structure that is not in the
image is the typical false positive. The rule is on the whole volume of a class's answer, the same quantity that
:class:`~bundle.evaluation.AbsentPromptsReport` measures per threshold, so the threshold is chosen from that report.
MONAI's ``RemoveSmallObjectsd`` removes small connected components instead, which would also erode a real
structure's fragments.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["DropSmallAnswersd"]


class DropSmallAnswersd(MapTransform):
    """Sets to background every class of a label map whose total volume is at most ``min_volume_ml``.

    Args:
        keys: label maps (``[1, *S]`` integer values; voxel sizes from the MetaTensor's affine, else 1 mm).
        min_volume_ml: the threshold in ml; 0 (default) drops nothing.
        allow_missing_keys: don't raise an exception when a key is missing.

    Raises:
        ValueError: a negative threshold.
    """

    def __init__(self, keys: KeysCollection, min_volume_ml: float = 0.0, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if min_volume_ml < 0:
            raise ValueError(f"min_volume_ml must be >= 0, got {min_volume_ml}")
        self.min_volume_ml = float(min_volume_ml)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """
        Args:
            data: an item holding the label maps.

        Returns:
            A shallow copy with small answers set to 0 (the maps are copied, never changed in place).
        """
        d = dict(data)
        if self.min_volume_ml <= 0:
            return d
        for key in self.key_iterator(d):
            label = d[key]
            affine = getattr(label, "affine", None)
            spatial = label.dim() - 1
            voxel_ml = 1e-3  # 1 mm voxels without geometry
            if affine is not None:
                a = torch.as_tensor(affine).double().reshape(-1, spatial + 1, spatial + 1)[0]
                voxel_ml = float(abs(torch.det(a[:spatial, :spatial]))) / 1000.0
            values, counts = torch.unique(torch.as_tensor(label), return_counts=True)
            small = [
                int(v)
                for v, c in zip(values.tolist(), counts.tolist())
                if v != 0 and c * voxel_ml <= self.min_volume_ml
            ]
            if small:
                out = label.clone()
                for v in small:
                    out[label == v] = 0
                d[key] = out
        return d
