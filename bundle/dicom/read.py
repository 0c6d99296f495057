"""DICOM series geometry checks and reading to a RAS volume."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform

from bundle.data.checks import MAX_VOXELS
from bundle.dicom.discover import SeriesInfo

__all__ = ["SeriesError", "sorted_slices", "check_pixel_data", "read_series", "read_series_with_files", "LoadSeriesd"]


class SeriesError(ValueError):
    """A series that cannot become one volume with trustworthy geometry."""


_GEOMETRY_TAGS = [
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "Rows",
    "Columns",
    "PixelSpacing",
    "NumberOfFrames",
    "SeriesInstanceUID",
]


def sorted_slices(info: SeriesInfo, rel_tol: float = 0.01, abs_tol: float = 0.01) -> tuple[list[Path], float]:
    """The series' files ordered along the slice normal, and the slice spacing (mm), after geometry checks.

    Slices are ordered by the projection of ImagePositionPatient on the normal of ImageOrientationPatient (not by
    file name or InstanceNumber).

    Args:
        info: the series.
        rel_tol: relative tolerance of the slice spacing's evenness.
        abs_tol: absolute tolerance (mm) of the slice spacing's evenness, and the least distance between slices.

    Returns:
        ``(files in slice order, slice spacing in mm)``.

    Raises:
        SeriesError: naming the series and the problem: multi-frame objects (not supported: convert them to single
            frames first), fewer than 2 slices, missing position/orientation, mixed orientations or image sizes or
            pixel spacings, more than :data:`~bundle.data.checks.MAX_VOXELS` voxels in all, duplicate positions,
            missing slices (a gap of about twice the usual spacing or more) or otherwise uneven spacing.
    """
    import pydicom

    name = f"series {info.series_uid}"
    if len(info.files) < 2:
        raise SeriesError(f"{name}: {len(info.files)} slice(s); a volume needs at least 2")
    records = []
    for path in info.files:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=_GEOMETRY_TAGS)
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise SeriesError(f"{name}: {path} is a multi-frame object ({ds.NumberOfFrames} frames); not supported")
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            raise SeriesError(f"{name}: {path} has no ImagePositionPatient/ImageOrientationPatient")
        records.append(
            (
                path,
                np.asarray(ds.ImagePositionPatient, float),
                np.asarray(ds.ImageOrientationPatient, float),
                (int(ds.Rows), int(ds.Columns)),
                tuple(float(v) for v in ds.get("PixelSpacing", [1, 1])),
            )
        )
    orient = records[0][2]
    for path, _, o, size, spacing in records:
        if not np.allclose(o, orient, atol=1e-4):
            raise SeriesError(f"{name}: mixed orientations ({path}: {o.tolist()} vs {orient.tolist()})")
        if size != records[0][3]:
            raise SeriesError(f"{name}: mixed image sizes ({path}: {size} vs {records[0][3]})")
        if not np.allclose(spacing, records[0][4], rtol=1e-4):
            raise SeriesError(f"{name}: mixed pixel spacings ({path}: {spacing} vs {records[0][4]})")
    voxels = records[0][3][0] * records[0][3][1] * len(records)
    if voxels > MAX_VOXELS:
        raise SeriesError(
            f"{name}: {len(records)} slices of {records[0][3][0]}x{records[0][3][1]} are {voxels} voxels, over the "
            f"limit of {MAX_VOXELS}"
        )
    normal = np.cross(orient[:3], orient[3:])
    records.sort(key=lambda r: float(np.dot(r[1], normal)))
    positions = np.array([float(np.dot(r[1], normal)) for r in records])
    gaps = np.diff(positions)
    if (gaps < abs_tol).any():
        i = int(np.argmin(gaps))
        raise SeriesError(f"{name}: two slices at the same position ({records[i][0]}, {records[i + 1][0]})")
    step = float(np.median(gaps))
    if (gaps > step * 1.5).any():
        i = int(np.argmax(gaps))
        missing = int(round(gaps[i] / step)) - 1
        raise SeriesError(
            f"{name}: {missing} missing slice(s) between positions {positions[i]:.2f} and {positions[i + 1]:.2f} mm "
            f"({records[i][0].name} and {records[i + 1][0].name}; usual spacing {step:.2f} mm)"
        )
    if not np.allclose(gaps, step, rtol=rel_tol, atol=abs_tol):
        raise SeriesError(f"{name}: uneven slice spacing ({gaps.min():.3f} to {gaps.max():.3f} mm)")
    return [r[0] for r in records], step


def check_pixel_data(path: str | Path, series_uid: str = "") -> None:
    """Refuses a slice whose pixel data cannot be read in full (read as noise otherwise).

    The file is read completely with pydicom. Uncompressed pixel data must hold at least
    Rows x Columns x SamplesPerPixel x NumberOfFrames values of BitsAllocated bits; compressed pixel data must
    decode.

    Args:
        path: the slice file.
        series_uid: its series, for the message.

    Raises:
        SeriesError: ``"series <uid>: <file>: <problem>"`` (unreadable, no pixel data, truncated, undecodable).
    """
    import pydicom

    name = f"series {series_uid}: {path}"
    try:
        ds = pydicom.dcmread(str(path))
    except Exception as e:  # noqa: BLE001 - any failure to read is a bad slice
        raise SeriesError(f"{name}: unreadable ({type(e).__name__}: {e})") from e
    if "PixelData" not in ds:
        raise SeriesError(f"{name}: no pixel data")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and syntax.is_compressed:
        try:
            ds.pixel_array
        except Exception as e:  # noqa: BLE001 - undecodable pixel data
            raise SeriesError(f"{name}: compressed pixel data does not decode ({type(e).__name__}: {e})") from e
        return
    bits = int(ds.get("BitsAllocated", 16) or 16)
    values = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1)
    values *= int(ds.get("NumberOfFrames", 1) or 1)
    expected = (values * bits + 7) // 8
    found = len(ds.PixelData)
    if found < expected:
        raise SeriesError(f"{name}: truncated pixel data ({found} of {expected} bytes)")


def read_series(info: SeriesInfo) -> tuple[np.ndarray, np.ndarray]:
    """The series as a volume ``[X, Y, Z]`` (float32) and its RAS affine (NIfTI convention), after
    :func:`sorted_slices`' and :func:`check_pixel_data`'s checks. Pixel values are rescaled
    (RescaleSlope/Intercept) by SimpleITK.

    Args:
        info: the series.

    Returns:
        ``(volume, affine)``.

    Raises:
        SeriesError: naming the series (and the file) and the problem.
    """
    array, affine, _ = read_series_with_files(info)
    return array, affine


def read_series_with_files(info: SeriesInfo) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    """:func:`read_series`, plus the files in the volume's slice order (the last array axis).

    Args:
        info: the series.

    Returns:
        ``(volume, affine, files in slice order)``.

    Raises:
        SeriesError: naming the series (and the file) and the problem.
    """
    import SimpleITK as sitk  # noqa: N813 (SimpleITK's own convention)

    files, _ = sorted_slices(info)
    for path in files:
        check_pixel_data(path, info.series_uid)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    try:
        image = reader.Execute()
    except RuntimeError as e:
        raise SeriesError(f"series {info.series_uid}: unreadable pixel data ({e})") from e
    array = sitk.GetArrayFromImage(image).astype(np.float32).transpose(2, 1, 0)  # ITK [Z, Y, X] -> [X, Y, Z]
    direction = np.asarray(image.GetDirection(), float).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(image.GetSpacing(), float)[None, :]
    affine[:3, 3] = image.GetOrigin()
    lps_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    if not np.isfinite(array).all():
        raise SeriesError(f"series {info.series_uid}: pixel data contains NaN or Inf ({files[0].parent})")
    return array, lps_to_ras @ affine, files


class LoadSeriesd(MapTransform):
    """Reads a DICOM series (a :class:`SeriesInfo`) into a channel-first MetaTensor, like ``LoadImaged`` for files.

    Replaces ``LoadImaged(ensure_channel_first=True)`` at the head of the bundle's inference preprocessing (see
    ``configs/dicom_batch.json``), so a DICOM series goes through exactly the transforms a NIfTI file does. The
    array axes are ``[1, X (columns), Y (rows), Z (slices in position order)]`` with a RAS affine, and the slice
    files in that order are stored under ``files_key`` for writing results back as DICOM.

    Args:
        keys: the key(s) holding a :class:`SeriesInfo`.
        files_key: where to store the ordered slice paths (strings).

    Raises:
        TypeError: an entry is not a :class:`SeriesInfo`.
        SeriesError: the series cannot be read (see :func:`read_series`).
    """

    def __init__(self, keys: KeysCollection = "image", files_key: str = "source_files") -> None:
        super().__init__(keys)
        self.files_key = files_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Reads the series of one item.

        Args:
            data: a dictionary holding :class:`SeriesInfo` under ``keys``.

        Returns:
            The item with the volume(s) and ``files_key``.
        """
        import torch
        from monai.data import MetaTensor

        d = dict(data)
        for key in self.key_iterator(d):
            info = d[key]
            if not isinstance(info, SeriesInfo):
                raise TypeError(f"LoadSeriesd expects a SeriesInfo under {key!r}, got {type(info).__name__}")
            array, affine, files = read_series_with_files(info)
            meta = {
                "filename_or_obj": f"series {info.series_uid} ({files[0].parent})",
                "original_affine": affine,
                "space": "RAS",
                "series_uid": info.series_uid,
                "study_uid": info.study_uid,
            }
            d[key] = MetaTensor(torch.from_numpy(array[None]), affine=torch.as_tensor(affine), meta=meta)
            d[self.files_key] = [str(f) for f in files]
        return d
