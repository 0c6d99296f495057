"""Input checks that fail early, naming the file, on inputs that would otherwise give silent garbage."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from bundle.utils.metadata import source_name

__all__ = ["CheckInputd"]


class CheckInputd(MapTransform):
    """Fails early, naming the file, on inputs that would otherwise give silent garbage.

    Checks, after loading with channel-first layout: the image has ``spatial_dims`` spatial dimensions; intensities
    are finite; the label (when present) has the image's spatial shape and affine (within ``atol``).

    Args:
        keys: image key(s) to check for dimensionality and finite values.
        label_key: label key compared with the first image key, if present in the data.
        spatial_dims: expected number of spatial dimensions.
        atol: tolerance of the affine comparison, in mm.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        label_key: str | None = "label",
        spatial_dims: int = 3,
        atol: float = 1e-3,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_key = label_key
        self.spatial_dims = spatial_dims
        self.atol = atol

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        first: Hashable | None = None
        for key in self.key_iterator(d):
            first = first if first is not None else key
            img = torch.as_tensor(d[key])
            name = source_name(d, key)
            if img.dim() != self.spatial_dims + 1:
                raise ValueError(
                    f"{name}: expected a {self.spatial_dims}D image (channel-first shape with {self.spatial_dims} "
                    f"spatial dims), got shape {tuple(img.shape)}"
                )
            if img.is_floating_point() and not torch.isfinite(img).all():
                bad = int((~torch.isfinite(img)).sum())
                raise ValueError(f"{name}: {bad} voxel(s) are NaN or infinite")
        if first is not None and self.label_key and self.label_key in d:
            img, lab = d[first], d[self.label_key]
            if tuple(lab.shape[1:]) != tuple(img.shape[1:]):
                raise ValueError(
                    f"{source_name(d, self.label_key)}: label shape {tuple(lab.shape[1:])} differs from image "
                    f"{source_name(d, first)} shape {tuple(img.shape[1:])}"
                )
            a_img, a_lab = getattr(img, "affine", None), getattr(lab, "affine", None)
            if (
                a_img is not None
                and a_lab is not None
                and not np.allclose(np.asarray(a_img), np.asarray(a_lab), atol=self.atol)
            ):
                raise ValueError(
                    f"{source_name(d, self.label_key)}: label geometry (affine) differs from image "
                    f"{source_name(d, first)}:\n{np.asarray(a_lab)}\nvs\n{np.asarray(a_img)}"
                )
        return d
