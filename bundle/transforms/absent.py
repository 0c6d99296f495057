"""The "absent" rule: an answer whose whole volume is at most a threshold is no answer (the structure is absent).

A text-prompted model answers every prompt; a faint, small response to a prompt of a structure that is not in the
image is the typical false positive. The rule is on the whole volume of a class's answer, the same quantity that
:class:`~bundle.evaluation.AbsentPromptsReport` measures per threshold, so the threshold is chosen from that report.
MONAI's ``RemoveSmallObjectsd`` removes small connected components instead, which would also erode a real
structure's fragments.

A threshold can be the same for every structure (``min_answer_ml``), or scaled to each structure's size
(:func:`answer_thresholds_ml`): a fraction of the smallest volume the structure had in the training labels, which
the model file records (:func:`~bundle.data.structure_volumes_ml`). A liver answer of 50 ml is no liver; a
hippocampus answer of 1 ml is a hippocampus.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["DropSmallAnswersd", "answer_thresholds_ml", "voxel_volume_ml"]


def voxel_volume_ml(image: Any, spatial_dims: int | None = None) -> float:
    """The volume of one voxel of ``image`` in ml, from its affine (1 mm voxels, 0.001 ml, when it has none).

    Args:
        image: a tensor or MetaTensor (``affine`` ``[d+1, d+1]`` or batched ``[B, d+1, d+1]``).
        spatial_dims: the spatial dimensions (default: the affine's).

    Returns:
        The voxel volume in ml (mm^d / 1000; an area for 2D images).
    """
    affine = getattr(image, "affine", None)
    if affine is None:
        return 1e-3
    a = torch.as_tensor(affine).double()
    a = a.reshape(-1, a.shape[-2], a.shape[-1])[0]
    d = spatial_dims if spatial_dims is not None else a.shape[-1] - 1
    return float(abs(torch.det(a[:d, :d]))) / 1000.0


def answer_thresholds_ml(
    names: Sequence[str],
    min_answer_ml: float = 0.0,
    fraction: float = 0.0,
    structure_volumes: Mapping[str, float] | None = None,
) -> list[float]:
    """Per prompt, the largest answer that counts as absent: ``max(min_answer_ml, fraction x its smallest training
    volume)``. A structure the table does not hold gets ``min_answer_ml``.

    Args:
        names: the prompts, in the order of their label values ``1..K`` before relabelling.
        min_answer_ml: the threshold for every structure (ml).
        fraction: the share of the structure's smallest training volume (0: not used).
        structure_volumes: ``{structure name: smallest training-label volume in ml}`` (the model file's
            ``structure_volumes_ml``); ``None`` or empty: none known.

    Returns:
        ``K`` thresholds in ml, for :class:`DropSmallAnswersd`.

    Raises:
        ValueError: a negative threshold or fraction.
    """
    from bundle.text import normalize_prompt

    if min_answer_ml < 0 or fraction < 0:
        raise ValueError(f"min_answer_ml and the volume fraction must be >= 0, got {min_answer_ml} and {fraction}")
    volumes = {normalize_prompt(k): float(v) for k, v in (structure_volumes or {}).items()}
    return [max(float(min_answer_ml), fraction * volumes.get(normalize_prompt(n), 0.0)) for n in names]


class DropSmallAnswersd(MapTransform):
    """Sets to background every class of a label map whose total volume is at most its threshold.

    Args:
        keys: label maps (``[1, *S]`` integer values; voxel sizes from the MetaTensor's affine, else 1 mm).
        min_volume_ml: the threshold in ml, one for every class, or a sequence with one per class value ``1..K``
            (:func:`answer_thresholds_ml`; values beyond it use 0); 0 (default) drops nothing.
        allow_missing_keys: don't raise an exception when a key is missing.

    Raises:
        ValueError: a negative threshold.
    """

    def __init__(
        self, keys: KeysCollection, min_volume_ml: float | Sequence[float] = 0.0, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        per_class = isinstance(min_volume_ml, Sequence)
        thresholds = [float(t) for t in min_volume_ml] if per_class else [float(min_volume_ml)]
        if any(t < 0 for t in thresholds):
            raise ValueError(f"min_volume_ml must be >= 0, got {min_volume_ml}")
        self.min_volume_ml: float | list[float] = thresholds if per_class else thresholds[0]

    def threshold(self, value: int) -> float:
        """The threshold (ml) of a label value.

        Args:
            value: the class's label value (``1..K``).
        """
        if isinstance(self.min_volume_ml, list):
            return self.min_volume_ml[value - 1] if 1 <= value <= len(self.min_volume_ml) else 0.0
        return self.min_volume_ml

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """
        Args:
            data: an item holding the label maps.

        Returns:
            A shallow copy with small answers set to 0 (the maps are copied, never changed in place).
        """
        d = dict(data)
        thresholds = self.min_volume_ml if isinstance(self.min_volume_ml, list) else [self.min_volume_ml]
        if max(thresholds, default=0.0) <= 0:
            return d
        for key in self.key_iterator(d):
            label = d[key]
            voxel_ml = voxel_volume_ml(label, label.dim() - 1)
            values, counts = torch.unique(torch.as_tensor(label), return_counts=True)
            small = [
                int(v)
                for v, c in zip(values.tolist(), counts.tolist())
                if v != 0 and c * voxel_ml <= self.threshold(int(v))
            ]
            if small:
                out = label.clone()
                for v in small:
                    out[label == v] = 0
                d[key] = out
        return d
