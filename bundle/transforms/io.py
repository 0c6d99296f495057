"""Writing label maps (atomically, with their own geometry), and the source file of an item for messages."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from bundle.utils.io import atomic_path
from bundle.utils.metadata import source_name

__all__ = ["output_path_for", "SaveLabelMapd"]


def output_path_for(source: str | os.PathLike, output_dir: str | os.PathLike, postfix: str = "seg") -> Path:
    """``output_dir/<source stem>_<postfix>.nii.gz``."""
    name = Path(str(source)).name
    for suffix in (".nii.gz", ".nii", ".mha", ".nrrd"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return Path(output_dir) / f"{name}_{postfix}.nii.gz"


class SaveLabelMapd(MapTransform):
    """Writes a label map as NIfTI with its own geometry, atomically (temporary file, then rename).

    A killed run never leaves a half-written file; an existing output is replaced only by a complete one.

    Args:
        keys: the label map(s) ``[1, *S]`` (MetaTensor carrying ``affine`` and ``filename_or_obj``).
        output_dir: destination folder (``None``: write nothing).
        postfix: appended to the source file's stem.
        dtype: integer type of the written labels.
        source_key: the key whose file name names the output (defaults to the label map's own metadata).
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | os.PathLike | None,
        postfix: str = "seg",
        dtype: Any = np.uint8,
        source_key: str | None = "image",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir) if output_dir else None
        self.postfix = postfix
        self.dtype = dtype
        self.source_key = source_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        import nibabel as nib

        d = dict(data)
        if self.output_dir is None:
            return d
        for key in self.key_iterator(d):
            label = d[key]
            source = source_name(d, self.source_key) if self.source_key in d else source_name(d, key)
            affine = np.asarray(getattr(label, "affine", np.eye(4)), dtype=np.float64)
            array = torch.as_tensor(label).detach().cpu().numpy()
            if array.ndim == len(affine) and array.shape[0] == 1:  # drop the channel axis
                array = array[0]
            out = output_path_for(source, self.output_dir, self.postfix)
            with atomic_path(out, suffix=".nii.gz") as tmp:
                nib.save(nib.Nifti1Image(np.rint(array).astype(self.dtype), affine), str(tmp))
            d[f"{key}_path"] = str(out)
        return d
