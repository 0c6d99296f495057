"""Input checks that fail early, naming the file, on inputs that would otherwise give silent garbage or a crash.

:class:`CheckHeaderd` runs before loading and reads only the NIfTI header: volumes with more than
:data:`MAX_VOXELS` voxels, images with more than the expected spatial dimensions (4D time series) and uncompressed
files shorter than their header says are refused before any memory is allocated for them. :class:`CheckInputd` runs
after loading: dimensionality, finite intensities, signal (a constant image is refused), plausible voxel geometry
(:data:`SPACING_RANGE_MM`, :data:`MAX_ANISOTROPY`; images are refused, never resampled) and, for evaluation, label
values that the model's ``channel_def`` knows.
"""

from __future__ import annotations

import math
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from bundle.utils.metadata import source_name

__all__ = ["MAX_VOXELS", "SPACING_RANGE_MM", "MAX_ANISOTROPY", "CheckHeaderd", "CheckInputd"]

# largest volume accepted (512^3 voxels, 0.5 GiB as float32): a bigger header is refused before loading
MAX_VOXELS = 512**3
# voxel sizes an MR image can plausibly have, in mm
SPACING_RANGE_MM = (0.05, 20.0)
# largest ratio of the largest to the smallest voxel size: the model works on near-isotropic (about 1 mm) voxels,
# and strongly anisotropic images (2D stacks such as 0.3 x 0.3 x 6 mm) are refused rather than segmented as garbage;
# resample them to near-isotropic voxels first
MAX_ANISOTROPY = 4.0

_NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _header_problem(path: Path, spatial_dims: int, max_voxels: int) -> str | None:
    """What is wrong with a NIfTI file judged from its header and size alone, or ``None``."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except Exception as e:  # noqa: BLE001 - any failure to read the header is a bad file
        return f"unreadable NIfTI header ({type(e).__name__}: {e})"
    shape = tuple(int(s) for s in img.shape)
    if len(shape) < spatial_dims:
        return f"expected a {spatial_dims}D image, the header says shape {shape}"
    extra = shape[spatial_dims:]
    if extra and math.prod(extra) > 1:
        return (
            f"a {len(shape)}D image of shape {shape} ({math.prod(extra)} volumes); expected one {spatial_dims}D "
            "volume (split the series into separate files)"
        )
    voxels = math.prod(shape)
    if voxels > max_voxels:
        return f"shape {shape} is {voxels} voxels, over the limit of {max_voxels}; refused before loading"
    if not path.name.endswith(".gz"):
        header = img.header
        offset = int(getattr(img.dataobj, "offset", header.get_data_offset()))
        expected = offset + voxels * np.dtype(header.get_data_dtype()).itemsize
        size = path.stat().st_size
        if size < expected:
            return f"truncated: {size} bytes, the header needs {expected}"
    return None


class CheckHeaderd(MapTransform):
    """Refuses, before loading, NIfTI files whose header shows they cannot be a volume to segment.

    Refused: an unreadable header; more than ``spatial_dims`` dimensions unless the extra ones have size 1 (4D time
    series); more than ``max_voxels`` voxels (so a damaged or huge header fails with the file's name instead of a
    ``MemoryError``); an uncompressed ``.nii`` shorter than its header needs (truncated). Entries that are not NIfTI
    paths (a DICOM series, arrays) pass unchanged.

    Args:
        keys: the entries holding file paths.
        spatial_dims: expected number of spatial dimensions.
        max_voxels: largest accepted number of voxels (:data:`MAX_VOXELS`).
        allow_missing_keys: do not fail when a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        spatial_dims: int = 3,
        max_voxels: int = MAX_VOXELS,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spatial_dims = spatial_dims
        self.max_voxels = max_voxels

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Checks the headers of the NIfTI files named under ``keys``.

        Args:
            data: a MONAI dictionary item whose entries are paths.

        Returns:
            The item, unchanged.

        Raises:
            ValueError: ``"<file>: <problem>"`` for the first bad file.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            if not isinstance(value, (str, os.PathLike)) or not str(value).endswith(_NIFTI_SUFFIXES):
                continue
            problem = _header_problem(Path(value), self.spatial_dims, self.max_voxels)
            if problem:
                raise ValueError(f"{value}: {problem}")
        return d


def _spacing(img: Any, spatial_dims: int) -> list[float] | None:
    affine = getattr(img, "affine", None)
    if affine is None:
        return None
    a = np.asarray(torch.as_tensor(affine).detach().cpu(), dtype=np.float64)
    return np.linalg.norm(a[:spatial_dims, :spatial_dims], axis=0).tolist()


class CheckInputd(MapTransform):
    """Fails early, naming the file, on inputs that would otherwise give silent garbage.

    Checks, after loading with channel-first layout: the image has ``spatial_dims`` spatial dimensions; intensities
    are finite; the image has signal (not constant, e.g. all zero); its voxel sizes lie in ``spacing_range`` and
    the ratio of the largest to the smallest is at most ``max_anisotropy`` (an image outside is refused, never
    resampled); the label (when present) has ``spatial_dims`` spatial dimensions and one channel, the image's spatial
    shape and affine (within ``atol``) and, when ``label_values`` is given, only those integer values.

    Args:
        keys: image key(s) to check.
        label_key: label key compared with the first image key, if present in the data.
        spatial_dims: expected number of spatial dimensions.
        atol: tolerance of the affine comparison, in mm.
        spacing_range: ``(smallest, largest)`` plausible voxel size in mm (``None``: not checked).
        max_anisotropy: largest accepted ratio of the largest to the smallest voxel size (``None``: not checked).
        label_values: the label values a label may hold (background 0 and the ``channel_def`` classes); ``None``:
            values not checked.
        allow_missing_keys: do not fail when a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        label_key: str | None = "label",
        spatial_dims: int = 3,
        atol: float = 1e-3,
        spacing_range: Sequence[float] | None = SPACING_RANGE_MM,
        max_anisotropy: float | None = MAX_ANISOTROPY,
        label_values: Sequence[int] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_key = label_key
        self.spatial_dims = spatial_dims
        self.atol = atol
        self.spacing_range = tuple(float(v) for v in spacing_range) if spacing_range is not None else None
        self.max_anisotropy = max_anisotropy
        self.label_values = sorted({int(v) for v in label_values}) if label_values is not None else None

    def _check_image(self, img: torch.Tensor, name: str) -> None:
        if img.dim() != self.spatial_dims + 1:
            raise ValueError(
                f"{name}: expected a {self.spatial_dims}D image (channel-first shape with {self.spatial_dims} "
                f"spatial dims), got shape {tuple(img.shape)}"
            )
        if img.numel() == 0:
            raise ValueError(f"{name}: empty image of shape {tuple(img.shape)}")
        if img.is_floating_point() and not torch.isfinite(img).all():
            bad = int((~torch.isfinite(img)).sum())
            raise ValueError(f"{name}: {bad} voxel(s) are NaN or infinite")
        low, high = float(img.min()), float(img.max())
        if low == high:
            raise ValueError(f"{name}: no signal: every voxel is {low:g} (an empty or constant image)")
        spacing = _spacing(img, self.spatial_dims)
        if spacing is None:
            return
        shown = " x ".join(f"{s:.3g}" for s in spacing)
        if self.spacing_range is not None and not all(
            self.spacing_range[0] <= s <= self.spacing_range[1] for s in spacing
        ):
            raise ValueError(
                f"{name}: implausible voxel size {shown} mm (accepted: {self.spacing_range[0]:g} to "
                f"{self.spacing_range[1]:g} mm)"
            )
        if self.max_anisotropy is not None and min(spacing) > 0 and max(spacing) / min(spacing) > self.max_anisotropy:
            raise ValueError(
                f"{name}: voxel size {shown} mm is too anisotropic (ratio {max(spacing) / min(spacing):.1f}, at most "
                f"{self.max_anisotropy:g} accepted); resample it to near-isotropic voxels first"
            )

    def _check_label(self, lab: torch.Tensor, name: str) -> None:
        if lab.dim() != self.spatial_dims + 1 or lab.shape[0] != 1:
            raise ValueError(
                f"{name}: expected a {self.spatial_dims}D label with one channel, got shape {tuple(lab.shape)}"
            )
        if self.label_values is None:
            return
        if lab.is_floating_point():
            if not torch.isfinite(lab).all():
                raise ValueError(f"{name}: label has NaN or infinite values")
            if not torch.equal(lab, torch.round(lab)):
                odd = torch.unique(lab[lab != torch.round(lab)])[:5].tolist()
                raise ValueError(f"{name}: label has non-integer values (e.g. {odd}); labels must be integers")
        found = [int(v) for v in torch.unique(lab).tolist()]
        unknown = [v for v in found if v not in self.label_values]
        if unknown:
            raise ValueError(
                f"{name}: label values {unknown[:10]} are not among the model's classes {self.label_values} "
                "(channel_def)"
            )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Checks the loaded image(s) and label of one item.

        Args:
            data: a MONAI dictionary item after loading (channel-first MetaTensors).

        Returns:
            The item, unchanged.

        Raises:
            ValueError: ``"<file>: <problem>"`` for the first problem found.
        """
        d = dict(data)
        first: Hashable | None = None
        for key in self.key_iterator(d):
            first = first if first is not None else key
            self._check_image(torch.as_tensor(d[key]), source_name(d, key))
        if first is not None and self.label_key and self.label_key in d:
            img, lab = d[first], d[self.label_key]
            self._check_label(torch.as_tensor(lab), source_name(d, self.label_key))
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
