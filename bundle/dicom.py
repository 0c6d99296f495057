"""DICOM input: find the image series in a folder tree of studies, from headers only.

:func:`discover_series` walks a folder (any nesting, studies and series mixed), reads each file's header without
pixel data, groups the files by StudyInstanceUID and SeriesInstanceUID, and selects image series by Modality (MR
by default) and an optional SeriesDescription pattern. Everything it does not select is reported with the reason:
files that are not DICOM or cannot be read, non-image objects (structured reports, segmentations, presentation
states, key-object selections, RT structures), other modalities, other descriptions. :func:`sorted_slices` checks a
series' geometry and orders its slices; :func:`read_series` reads it as a volume with a RAS affine, and
:class:`LoadSeriesd` is that reader as the first transform of the bundle's inference preprocessing.
:func:`safe_name` turns a tag value (a UID, a description) into a file-name component that cannot leave the output
folder.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Hashable, List, Mapping, Optional, Tuple, Union

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["SeriesInfo", "Skipped", "SeriesError", "discover_series", "sorted_slices", "read_series", "safe_name",
           "read_series_with_files", "LoadSeriesd", "NON_IMAGE_MODALITIES"]

# Modality values of DICOM objects that carry no image to segment
NON_IMAGE_MODALITIES = {"SR": "structured report", "SEG": "segmentation", "PR": "presentation state",
                        "KO": "key object selection", "RTSTRUCT": "RT structure set", "REG": "registration",
                        "DOC": "encapsulated document", "RWV": "real world value map"}

_HEADER_TAGS = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Modality",
                "SeriesDescription", "InstanceNumber", "Rows", "Columns"]


@dataclass
class SeriesInfo:
    """One image series: its UIDs, modality, description and files (sorted by path)."""

    study_uid: str
    series_uid: str
    modality: str
    description: str
    files: List[Path] = field(default_factory=list)

    @property
    def key(self) -> str:
        """A file-system-safe identifier of the series (study and series UID)."""
        return f"{safe_name(self.study_uid)}/{safe_name(self.series_uid)}"


@dataclass
class Skipped:
    """Something that was not selected, and why."""

    what: str
    reason: str


def safe_name(value: object, max_length: int = 96) -> str:
    """A file-name component from a tag value: only ``[A-Za-z0-9._-]``, no leading dot, never empty.

    ``"../../etc"`` becomes ``"etc"``-like text without separators or parent references, so a name built from
    header values always stays inside the output folder.
    """
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", str(value)).strip("._-")
    text = re.sub(r"\.{2,}", ".", text)[:max_length].rstrip("._-")
    return text or "unnamed"


def discover_series(
    root: Union[str, os.PathLike], modality: Optional[str] = "MR", description: Optional[str] = None
) -> Tuple[List[SeriesInfo], List[Skipped]]:
    """The image series under ``root`` and everything skipped, with reasons.

    Args:
        root: a folder (walked recursively, symbolic links not followed) or one file.
        modality: keep series of this Modality (``None``: any image modality).
        description: a regular expression; keep series whose SeriesDescription matches it (``re.search``).

    Returns:
        ``(series sorted by study and series UID, skipped items)``.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such folder or file")
    paths = [root] if root.is_file() else sorted(
        Path(d) / f for d, _, files in os.walk(root) for f in files if not f.startswith(".")
    )
    pattern = re.compile(description) if description else None
    groups: Dict[Tuple[str, str], SeriesInfo] = {}
    skipped: List[Skipped] = []
    for path in paths:
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, AttributeError, KeyError) as e:
            skipped.append(Skipped(str(path), f"not a readable DICOM file ({type(e).__name__}: {e})"))
            continue
        study, series = str(ds.get("StudyInstanceUID", "") or ""), str(ds.get("SeriesInstanceUID", "") or "")
        if not study or not series:
            skipped.append(Skipped(str(path), "no StudyInstanceUID or SeriesInstanceUID"))
            continue
        info = groups.setdefault(
            (study, series),
            SeriesInfo(study, series, str(ds.get("Modality", "") or ""), str(ds.get("SeriesDescription", "") or "")),
        )
        info.files.append(path)
    selected: List[SeriesInfo] = []
    for (study, series), info in sorted(groups.items()):
        what = f"series {series} (study {study}, {info.modality or 'no modality'}, {info.description!r}, " \
               f"{len(info.files)} file(s))"
        if info.modality in NON_IMAGE_MODALITIES:
            skipped.append(Skipped(what, f"non-image object: {NON_IMAGE_MODALITIES[info.modality]}"))
        elif modality and info.modality != modality:
            skipped.append(Skipped(what, f"modality {info.modality or 'missing'}, not {modality}"))
        elif pattern is not None and not pattern.search(info.description):
            skipped.append(Skipped(what, f"SeriesDescription does not match {description!r}"))
        else:
            selected.append(info)
    return selected, skipped


class SeriesError(ValueError):
    """A series that cannot become one volume with trustworthy geometry."""


_GEOMETRY_TAGS = ["ImagePositionPatient", "ImageOrientationPatient", "Rows", "Columns", "PixelSpacing",
                  "NumberOfFrames", "SeriesInstanceUID"]


def sorted_slices(info: SeriesInfo, rel_tol: float = 0.01, abs_tol: float = 0.01) -> Tuple[List[Path], float]:
    """The series' files ordered along the slice normal, and the slice spacing (mm), after geometry checks.

    Slices are ordered by the projection of ImagePositionPatient on the normal of ImageOrientationPatient (not by
    file name or InstanceNumber).

    Raises:
        SeriesError: naming the series and the problem: multi-frame objects (not supported: convert them to single
            frames first), fewer than 2 slices, missing position/orientation, mixed orientations or image sizes or
            pixel spacings, duplicate positions, missing slices (a gap of about twice the usual spacing or more) or
            otherwise uneven spacing.
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
        records.append((path, np.asarray(ds.ImagePositionPatient, float), np.asarray(ds.ImageOrientationPatient, float),
                        (int(ds.Rows), int(ds.Columns)), tuple(float(v) for v in ds.get("PixelSpacing", [1, 1]))))
    orient = records[0][2]
    for path, _, o, size, spacing in records:
        if not np.allclose(o, orient, atol=1e-4):
            raise SeriesError(f"{name}: mixed orientations ({path}: {o.tolist()} vs {orient.tolist()})")
        if size != records[0][3]:
            raise SeriesError(f"{name}: mixed image sizes ({path}: {size} vs {records[0][3]})")
        if not np.allclose(spacing, records[0][4], rtol=1e-4):
            raise SeriesError(f"{name}: mixed pixel spacings ({path}: {spacing} vs {records[0][4]})")
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


def read_series(info: SeriesInfo) -> Tuple[np.ndarray, np.ndarray]:
    """The series as a volume ``[X, Y, Z]`` (float32) and its RAS affine (NIfTI convention), after
    :func:`sorted_slices`' checks. Pixel values are rescaled (RescaleSlope/Intercept) by SimpleITK."""
    array, affine, _ = read_series_with_files(info)
    return array, affine


def read_series_with_files(info: SeriesInfo) -> Tuple[np.ndarray, np.ndarray, List[Path]]:
    """:func:`read_series`, plus the files in the volume's slice order (the last array axis)."""
    import SimpleITK as sitk

    files, _ = sorted_slices(info)
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
    """

    def __init__(self, keys: KeysCollection = "image", files_key: str = "source_files") -> None:
        super().__init__(keys)
        self.files_key = files_key

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        import torch
        from monai.data import MetaTensor

        d = dict(data)
        for key in self.key_iterator(d):
            info = d[key]
            if not isinstance(info, SeriesInfo):
                raise TypeError(f"LoadSeriesd expects a SeriesInfo under {key!r}, got {type(info).__name__}")
            array, affine, files = read_series_with_files(info)
            meta = {"filename_or_obj": f"series {info.series_uid} ({files[0].parent})", "original_affine": affine,
                    "space": "RAS", "series_uid": info.series_uid, "study_uid": info.study_uid}
            d[key] = MetaTensor(torch.from_numpy(array[None]), affine=torch.as_tensor(affine), meta=meta)
            d[self.files_key] = [str(f) for f in files]
        return d
