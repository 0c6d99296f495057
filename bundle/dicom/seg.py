"""DICOM SEG output: a label map on a source series becomes a DICOM Segmentation, checked by reading it back.

:func:`write_seg` builds the SEG with highdicom (one segment per prompt, labelled with the prompt text, coded
concepts from :func:`coded_concepts`, algorithm identification naming SegOne and its version, references to every
source instance and the source Frame of Reference), writes it to a temporary file, reads that back and compares
segments, references and pixels with what was meant (:func:`check_seg`), and only then renames it into place: a
kill at any moment leaves either no SEG or a complete, checked one. :class:`SaveDicomSegd` is the same as the last
transform of the bundle's inference postprocessing (``configs/dicom_batch.json``).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from bundle.dicom import safe_name
from bundle.utils.io import TEMP_MARK, atomic_path

__all__ = ["coded_concepts", "write_seg", "check_seg", "SegCheckError", "SaveDicomSegd", "dciodvfy_errors", "TEMP_MARK"]

logger = logging.getLogger(__name__)


def _code(value: str, meaning: str) -> Any:
    from pydicom.sr.coding import Code

    return Code(value, "SCT", meaning)


# Segmentation property categories (DICOM CID 7150) and types (CID 7151/7159 subsets), matched by keyword in the
# prompt, first match wins (so "left kidney" before "kidney"); anything else is coded as generic tissue and keeps its
# text in SegmentLabel. The codes are pydicom's (pydicom.sr.codedict) except the sided kidneys, which CID 7151 lacks
_ANATOMY = ("91723000", "Anatomical Structure")
_ALTERED = ("49755003", "Morphologically Altered Structure")
_TISSUE = ("85756007", "Tissue")
_SUBSTANCE = ("91720002", "Body Substance")
_CONCEPTS: list[tuple[str, tuple[str, str], tuple[str, str]]] = [
    ("hippocamp", _ANATOMY, ("5366008", "Hippocampus")),
    ("left ventricle", _ANATOMY, ("87878005", "Left Ventricle")),
    ("right ventricle", _ANATOMY, ("53085002", "Right ventricle")),
    # the cardiac data sets' "myocardium" is the left ventricle's
    ("myocard", _ANATOMY, ("49848007", "Left Ventricle Myocardium")),
    ("left atri", _ANATOMY, ("82471001", "Left atrium")),
    ("right atri", _ANATOMY, ("73829009", "Right Atrium")),
    ("right kidney", _ANATOMY, ("9846003", "Right kidney")),
    ("left kidney", _ANATOMY, ("18639004", "Left kidney")),
    ("kidney", _ANATOMY, ("64033007", "Kidney")),
    ("liver", _ANATOMY, ("10200004", "Liver")),
    ("spleen", _ANATOMY, ("78961009", "Spleen")),
    ("white matter", _TISSUE, ("389080008", "White Matter")),
    ("grey matter", _TISSUE, ("389081007", "Gray Matter")),
    ("gray matter", _TISSUE, ("389081007", "Gray Matter")),
    ("cerebrospinal", _SUBSTANCE, ("65216001", "Cerebrospinal Fluid")),
    ("edema", _ALTERED, ("79654002", "Edema")),
    ("oedema", _ALTERED, ("79654002", "Edema")),
    ("necros", _ALTERED, ("6574001", "Necrosis")),
    ("tumo", _ALTERED, ("108369006", "Neoplasm")),
    ("enhancing", _ALTERED, ("108369006", "Neoplasm")),
    ("neoplas", _ALTERED, ("108369006", "Neoplasm")),
    ("lesion", _ALTERED, ("52988006", "Lesion")),
    ("brain", _ANATOMY, ("12738006", "Brain")),
]


def coded_concepts(prompt: str) -> tuple[Any, Any]:
    """``(segmented property category, segmented property type)`` SNOMED CT codes for a prompt text.

    Args:
        prompt: the prompt text.

    Returns:
        Two pydicom ``Code`` objects (generic tissue for unknown prompts).
    """
    text = prompt.lower()
    for keyword, category, kind in _CONCEPTS:
        if keyword in text:
            return _code(*category), _code(*kind)
    return _code(*_TISSUE), _code(*_TISSUE)


class SegCheckError(RuntimeError):
    """A written SEG that does not read back as what was meant."""


def _segment_descriptions(prompts: Sequence[str], version: str) -> list[Any]:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name="SegOne", version=version[:64], family=codes.cid7162.ArtificialIntelligence
    )
    descriptions = []
    for number, prompt in enumerate(prompts, start=1):
        category, kind = coded_concepts(prompt)
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=prompt[:64],
                segmented_property_category=category,
                segmented_property_type=kind,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
            )
        )
    return descriptions


# Type 2 patient and study attributes (present, may be empty) that highdicom copies from the source; anonymised
# series often drop them entirely, and the SEG may carry them empty
_TYPE2_COPIED = [
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
]


def _with_type2_defaults(ds: Any) -> Any:
    """The in-memory source header with missing type 2 attributes added empty (the file is not touched)."""
    for keyword in _TYPE2_COPIED:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def write_seg(
    segments: np.ndarray,
    source_files: Sequence[str | os.PathLike],
    prompts: Sequence[str],
    path: str | os.PathLike,
    version: str,
    series_number: int = 9901,
) -> Path:
    """Writes ``segments`` on the source series as a checked DICOM SEG at ``path``, atomically.

    Args:
        segments: segment numbers ``[frames, rows, columns]`` (0 background, ``k`` for ``prompts[k - 1]``), frame
            ``i`` on ``source_files[i]``.
        source_files: the source series' single-frame instances, in frame order.
        prompts: the segments' prompt texts (SegmentLabel), segment ``k`` is ``prompts[k - 1]``.
        path: destination file.
        version: SegOne's model version, recorded in the algorithm identification and SoftwareVersions.
        series_number: SeriesNumber of the new SEG series.

    Returns:
        ``path``.

    Raises:
        SegCheckError: the file read back differs from what was meant (then nothing is left at ``path``).
        ValueError: ``segments`` do not fit the source frames or hold numbers beyond ``prompts``.
        OSError: the write failed (e.g. a full disk), naming the file and the cause; nothing is left at ``path``.
    """
    import highdicom as hd
    import pydicom

    segments = np.asarray(segments)
    sources = [_with_type2_defaults(pydicom.dcmread(str(f), stop_before_pixels=True)) for f in source_files]
    if segments.shape != (len(sources), int(sources[0].Rows), int(sources[0].Columns)):
        raise ValueError(
            f"segments of shape {segments.shape} do not fit {len(sources)} source frames of "
            f"{sources[0].Rows}x{sources[0].Columns}"
        )
    if segments.max(initial=0) > len(prompts) or segments.min(initial=0) < 0:
        raise ValueError(f"segment numbers must be in 0..{len(prompts)}, got {segments.min()}..{segments.max()}")
    description = ("SegOne: " + ", ".join(prompts))[:64]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=segments.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_segment_descriptions(prompts, version),
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="SegOne",
        manufacturer_model_name="SegOne",
        software_versions=version[:64],
        device_serial_number="none",
        series_description=description,
        omit_empty_frames=False,
    )
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            seg.save_as(str(tmp))
            check_seg(tmp, sources, prompts, segments)
    except OSError as e:
        message = f"writing {path} failed: {e.strerror or e}"
        raise (OSError(e.errno, message) if e.errno is not None else OSError(message)) from e
    return path


def check_seg(path: str | os.PathLike, sources: Sequence[Any], prompts: Sequence[str], segments: np.ndarray) -> None:
    """Reads the SEG at ``path`` with highdicom and checks it against what was meant.

    Checked: it is a Segmentation; its segments are ``prompts`` in order; it references the source series and
    shares its Frame of Reference; and its pixels, per source instance, equal ``segments``.

    Args:
        path: the SEG file.
        sources: the source instances' headers.
        prompts: the segments meant, in order.
        segments: the segment numbers meant ``[frames, rows, columns]``.

    Raises:
        SegCheckError: naming the file and the first difference.
    """
    import highdicom as hd

    try:
        seg = hd.seg.segread(str(path))
    except Exception as e:  # noqa: BLE001 - any failure to parse is a failed check
        raise SegCheckError(f"{path}: written SEG does not read back ({type(e).__name__}: {e})") from e
    if seg.SOPClassUID != "1.2.840.10008.5.1.4.1.1.66.4":
        raise SegCheckError(f"{path}: SOPClassUID {seg.SOPClassUID} is not Segmentation Storage")
    labels = [str(d.SegmentLabel) for d in seg.SegmentSequence]
    if labels != [p[:64] for p in prompts]:
        raise SegCheckError(f"{path}: segments {labels} read back, {list(prompts)} written")
    if seg.FrameOfReferenceUID != sources[0].FrameOfReferenceUID:
        raise SegCheckError(f"{path}: FrameOfReferenceUID differs from the source series")
    referenced = {str(s.SeriesInstanceUID) for s in seg.ReferencedSeriesSequence}
    if referenced != {str(sources[0].SeriesInstanceUID)}:
        raise SegCheckError(f"{path}: references series {sorted(referenced)}, not {sources[0].SeriesInstanceUID}")
    uids = [str(s.SOPInstanceUID) for s in sources]
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids,
        segment_numbers=list(range(1, len(prompts) + 1)),
        combine_segments=True,
        skip_overlap_checks=False,
    )
    if pixels.shape != segments.shape or not np.array_equal(pixels, segments):
        diff = int((pixels != segments).sum()) if pixels.shape == segments.shape else -1
        raise SegCheckError(
            f"{path}: pixels read back differ from those written (shape {pixels.shape} vs {segments.shape}, "
            f"{diff} voxel(s) differ)"
        )


def dciodvfy_errors(path: str | os.PathLike) -> list[str] | None:
    """The error lines of dicom3tools' ``dciodvfy`` on ``path``; ``None`` when ``dciodvfy`` is not installed.

    Args:
        path: the DICOM file.

    Returns:
        The lines starting with ``Error``, or ``None``.
    """
    exe = shutil.which("dciodvfy")
    if exe is None:
        return None
    proc = subprocess.run([exe, "-new", str(path)], capture_output=True, text=True, timeout=120)
    lines = (proc.stdout + proc.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


class SaveDicomSegd(MapTransform):
    """Writes the predicted label map as a DICOM SEG on its source series (and optionally a NIfTI copy).

    The label map holds the label values of ``prompt_selection`` (as written by the bundle's inference
    postprocessing); they become segment numbers ``1..K`` in prompt order. Output names come from the study and
    series UIDs through :func:`~bundle.dicom.safe_name` (:attr:`~bundle.dicom.SeriesInfo.key`), so no tag value
    can lead outside ``output_dir`` and distinct UIDs never share a folder: ``output_dir/<study>/<series>/seg.dcm``
    (and ``seg.nii.gz``).

    Args:
        keys: the label map ``[1, X, Y, Z]`` in the array space of :class:`~bundle.dicom.LoadSeriesd`.
        output_dir: destination folder.
        prompt_selection: the run's :class:`~bundle.text.PromptSelection` (prompt names and label values).
        version: model version recorded in the SEG.
        nifti: also write ``seg.nii.gz`` with the label values.
        series_key: the key holding the :class:`~bundle.dicom.SeriesInfo`.
        files_key: the key holding the ordered source files (from :class:`~bundle.dicom.LoadSeriesd`).

    Adds ``"outputs"``: the written paths.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | os.PathLike,
        prompt_selection: Any,
        version: str,
        nifti: bool = False,
        series_key: str = "series",
        files_key: str = "source_files",
    ) -> None:
        super().__init__(keys)
        self.output_dir = Path(output_dir)
        self.selection = prompt_selection
        self.version = str(version)
        self.nifti = nifti
        self.series_key = series_key
        self.files_key = files_key

    def folder_for(self, study_uid: str, series_uid: str) -> Path:
        """The output folder of a series.

        Args:
            study_uid: StudyInstanceUID.
            series_uid: SeriesInstanceUID.

        Returns:
            ``output_dir/<safe study>/<safe series>`` (the series' :attr:`~bundle.dicom.SeriesInfo.key`).
        """
        return self.output_dir / safe_name(study_uid) / safe_name(series_uid)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Writes the SEG (and NIfTI copy) of one series.

        Args:
            data: the item after postprocessing, with the series and its ordered source files.

        Returns:
            The item with ``"outputs"``.

        Raises:
            SegCheckError: the SEG does not read back as written.
            OSError: a write failed (e.g. a full disk), naming the file and the cause.
        """
        import nibabel as nib

        d = dict(data)
        info = d[self.series_key]
        folder = self.folder_for(info.study_uid, info.series_uid)
        outputs: list[str] = []
        for key in self.key_iterator(d):
            label = d[key]
            array = torch.as_tensor(label).detach().cpu().numpy()
            array = np.rint(array[0] if array.ndim == 4 else array).astype(np.int64)
            segments = np.zeros(array.shape, np.uint8)
            for number, value in enumerate(self.selection.values, start=1):
                segments[array == value] = number
            # [X, Y, Z] -> [frames (Z), rows (Y), columns (X)]
            outputs.append(
                str(
                    write_seg(
                        segments.transpose(2, 1, 0),
                        d[self.files_key],
                        self.selection.names,
                        folder / "seg.dcm",
                        self.version,
                    )
                )
            )
            if self.nifti:
                out = folder / "seg.nii.gz"
                affine = np.asarray(getattr(label, "affine", np.eye(4)), dtype=np.float64)
                try:
                    with atomic_path(out, suffix=".nii.gz") as tmp:
                        nib.save(nib.Nifti1Image(array.astype(np.uint8), affine), str(tmp))
                except OSError as e:
                    message = f"writing {out} failed: {e.strerror or e}"
                    raise (OSError(e.errno, message) if e.errno is not None else OSError(message)) from e
                outputs.append(str(out))
        d["outputs"] = outputs
        return d
