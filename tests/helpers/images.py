"""Images as the bundle's transforms see them after loading."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["meta_image"]


def meta_image(array: np.ndarray, name: str):
    """``array`` as a channel-first MetaTensor ``[1, *S]`` (float32) that names its source file ``name``."""
    from monai.data import MetaTensor

    return MetaTensor(torch.as_tensor(array, dtype=torch.float32)[None], meta={"filename_or_obj": name})
