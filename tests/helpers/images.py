"""Images as the bundle's transforms see them after loading."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch

__all__ = ["meta_image", "write_huge_nifti_header"]


def meta_image(array: np.ndarray, name: str):
    """``array`` as a channel-first MetaTensor ``[1, *S]`` (float32) that names its source file ``name``."""
    from monai.data import MetaTensor

    return MetaTensor(torch.as_tensor(array, dtype=torch.float32)[None], meta={"filename_or_obj": name})


def write_huge_nifti_header(path: Path) -> Path:
    """A NIfTI header that claims 2000^3 float32 voxels over a file of a few bytes (a header-size attack)."""
    header = nib.Nifti1Header()
    header.set_data_shape((2000, 2000, 2000))
    header.set_data_dtype(np.float32)
    header["vox_offset"] = 352
    with open(path, "wb") as f:
        header.write_to(f)
        f.write(b"\x00" * 68)
    return path
