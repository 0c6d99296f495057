"""DICOM input: find the image series in a folder tree of studies, from headers only."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["NON_IMAGE_MODALITIES", "SeriesInfo", "Skipped", "safe_name", "discover_series"]

# Modality values of DICOM objects that carry no image to segment
NON_IMAGE_MODALITIES = {
    "SR": "structured report",
    "SEG": "segmentation",
    "PR": "presentation state",
    "KO": "key object selection",
    "RTSTRUCT": "RT structure set",
    "REG": "registration",
    "DOC": "encapsulated document",
    "RWV": "real world value map",
}


_HEADER_TAGS = [
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "Modality",
    "SeriesDescription",
    "InstanceNumber",
    "Rows",
    "Columns",
]


@dataclass
class SeriesInfo:
    """One image series: its UIDs, modality, description and files (sorted by path).

    Args:
        study_uid: StudyInstanceUID.
        series_uid: SeriesInstanceUID.
        modality: Modality.
        description: SeriesDescription.
        files: the series' files.
    """

    study_uid: str
    series_uid: str
    modality: str
    description: str
    files: list[Path] = field(default_factory=list)

    @property
    def key(self) -> str:
        """A file-system-safe identifier of the series (study and series UID), distinct for distinct UIDs; the
        series' output folder below the batch's output folder."""
        return f"{safe_name(self.study_uid)}/{safe_name(self.series_uid)}"


@dataclass
class Skipped:
    """Something that was not selected, and why.

    Args:
        what: the file or series.
        reason: why it was skipped.
    """

    what: str
    reason: str


def safe_name(value: object, max_length: int = 96) -> str:
    """A file-name component from a tag value: only ``[A-Za-z0-9._-]``, no leading dot, never empty, and distinct
    for distinct values.

    ``"../../etc"`` becomes ``"etc"``-like text without separators or parent references, so a name built from
    header values always stays inside the output folder. A value that is already such a name (every valid UID) is
    kept as it is; any other value (characters replaced, dots or dashes stripped, cut at ``max_length``, empty)
    gets ``-`` and the first 10 hex digits of its SHA-256 appended, so values that differ only in what sanitising
    removes (``"1.2.3"`` and ``"1.2.3."``, two long values sharing their first ``max_length`` characters) still get
    different names.

    Args:
        value: the tag value (converted with ``str``).
        max_length: the longest name returned (at least 16).

    Returns:
        The file-name component.
    """
    raw = str(value)
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", raw).strip("._-")
    text = re.sub(r"\.{2,}", ".", text)
    if text and text == raw and len(text) <= max_length:
        return text
    digest = hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    text = text[: max(max_length - 11, 5)].rstrip("._-")
    return f"{text or 'unnamed'}-{digest}"


def discover_series(
    root: str | os.PathLike, modality: str | None = "MR", description: str | None = None
) -> tuple[list[SeriesInfo], list[Skipped]]:
    """The image series under ``root`` and everything skipped, with reasons.

    Args:
        root: a folder (walked recursively, symbolic links not followed) or one file.
        modality: keep series of this Modality (``None``: any image modality).
        description: a regular expression; keep series whose SeriesDescription matches it (``re.search``).

    Returns:
        ``(series sorted by study and series UID, skipped items)``.

    Raises:
        FileNotFoundError: ``root`` does not exist.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such folder or file")
    paths = (
        [root]
        if root.is_file()
        else sorted(Path(d) / f for d, _, files in os.walk(root) for f in files if not f.startswith("."))
    )
    pattern = re.compile(description) if description else None
    groups: dict[tuple[str, str], SeriesInfo] = {}
    skipped: list[Skipped] = []
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
    selected: list[SeriesInfo] = []
    for (study, series), info in sorted(groups.items()):
        what = (
            f"series {series} (study {study}, {info.modality or 'no modality'}, {info.description!r}, "
            f"{len(info.files)} file(s))"
        )
        if info.modality in NON_IMAGE_MODALITIES:
            skipped.append(Skipped(what, f"non-image object: {NON_IMAGE_MODALITIES[info.modality]}"))
        elif modality and info.modality != modality:
            skipped.append(Skipped(what, f"modality {info.modality or 'missing'}, not {modality}"))
        elif pattern is not None and not pattern.search(info.description):
            skipped.append(Skipped(what, f"SeriesDescription does not match {description!r}"))
        else:
            selected.append(info)
    return selected, skipped
