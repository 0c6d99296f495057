"""Conversion of the suite's HDF5 sources to NIfTI in the MSD layout: ACDC as published by 3DCardiac and the 2018
left-atrium challenge as published by UA-MT (docs/suite.md, "Getting the data").

Both sources store arrays without geometry: ``image`` (float) and ``label`` (integer class per voxel) in one HDF5
file per volume. Each case becomes ``imagesTr/<case>.nii.gz`` (int16 with ``scl_slope``/``scl_inter``, the float
intensities within a 1/65535 of their range) and ``labelsTr/<case>.nii.gz`` (uint8) with the diagonal affine the
source's ``spacing_note`` states, and the folder gets a ``dataset.json`` with its label names, which are the prompts.
The left atrium is averaged over 2x2x2 blocks by default (0.625 mm to 1.25 mm; the label by block majority), as in
the suite's copy.

A case that cannot be read (not HDF5, truncated, ``image`` or ``label`` missing, shapes that differ, not 3D,
non-finite intensities, label values outside the source's classes) is reported with its file and skipped; the other
cases are converted. Every file is written under a temporary name and renamed when complete, and the source files
are only read.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bundle.utils.io import atomic_path, write_text_atomic

__all__ = ["HDF5_SOURCES", "ConversionReport", "Hdf5Source", "block_reduce", "convert_hdf5_dataset", "read_hdf5_case"]


@dataclass(frozen=True)
class Hdf5Source:
    """How one published HDF5 tree maps to an MSD folder.

    Args:
        name: the folder's name and the case-id prefix (``acdc``, ``left_atrium``).
        file_pattern: regular expression over a file's path relative to the source folder (``/`` separators); its
            named groups form the case id through ``case_format``. Files that do not match (ACDC's 2D slice files)
            are not cases.
        case_format: ``str.format`` template of the case id from the pattern's groups.
        spacing: millimetres per voxel along the stored axes, before block averaging.
        default_block: the block-averaging factor the suite's copy uses.
        metadata: ``dataset.json`` fields (``labels`` among them); ``spacing_note`` gets ``{spacing}`` and
            ``{block_note}`` filled in.
    """

    name: str
    file_pattern: str
    case_format: str
    spacing: tuple[float, float, float]
    default_block: int
    metadata: dict[str, Any] = field(default_factory=dict)

    def case_id(self, relative_path: str) -> str | None:
        """The case id of a file of the source tree.

        Args:
            relative_path: the file's path below the source folder, ``/``-separated.

        Returns:
            The case id, or ``None`` when the file is not a volume of this source.
        """
        match = re.fullmatch(self.file_pattern, relative_path)
        return None if match is None else self.case_format.format(**match.groupdict())

    @property
    def labels(self) -> dict[int, str]:
        """Label value -> structure name, background included."""
        return {int(k): v for k, v in self.metadata["labels"].items()}


HDF5_SOURCES: dict[str, Hdf5Source] = {
    "acdc": Hdf5Source(
        name="acdc",
        # 3DCardiac's data/ACDC/data holds 3D volumes (patient001_frame01.h5) beside 2D slices (..._slice_1.h5)
        file_pattern=r"(?:.*/)?patient(?P<patient>\d{3})_frame(?P<frame>\d{2})\.h5",
        case_format="acdc_{patient}_frame{frame}",
        spacing=(10.0, 1.5, 1.5),
        default_block=1,
        metadata={
            "name": "ACDC cardiac cine MRI, end-diastole and end-systole",
            "description": (
                "Short-axis cine MRI from the Automated Cardiac Diagnosis Challenge (MICCAI 2017, University Hospital "
                "of Dijon): the training patients stored as 3D volumes in the 3DCardiac repository (SSL4MIS-style "
                "HDF5), frame01 = end-diastole, frame02 = end-systole (both frames of a patient always together). "
                "Intensities min-max scaled to [0, 1] per volume by the source; native slice grid, axes as stored "
                "(slice, row, column). Case ids are the ACDC patient numbers."
            ),
            "tensorImageSize": "3D",
            "modality": {"0": "MRI"},
            "sequence": {"0": "bSSFP cine"},
            "labels": {"0": "background", "1": "right ventricle", "2": "myocardium", "3": "left ventricle"},
            "license": (
                "CC BY-NC-SA 4.0 (ACDC): non-commercial scientific research only, cite Bernard et al. 2018; for "
                "benchmarks and tests only"
            ),
            "reference": (
                "O. Bernard et al., Deep learning techniques for automatic MRI cardiac multi-structures segmentation "
                "and diagnosis: is the problem solved?, IEEE TMI 37(11):2514-2525, 2018."
            ),
            "source": "github.com/antares0811/3DCardiac data/ACDC/data/patient<NNN>_frame<NN>.h5 (image, label)",
            "spacing_note": (
                "Nominal: the HDF5 stores no geometry. Written with a diagonal affine of {spacing} mm{block_note} "
                "(axis 0 is the slice axis); true ACDC spacing is 1.37-1.68 mm in-plane and 5-10 mm between slices, "
                "and the orientation is unknown."
            ),
        },
    ),
    "left_atrium": Hdf5Source(
        name="left_atrium",
        file_pattern=r"(?:.*/)?(?P<case>[A-Za-z0-9]+)/mri_norm2\.h5",
        case_format="left_atrium_{case}",
        spacing=(0.625, 0.625, 0.625),
        default_block=2,
        metadata={
            "name": "Left atrium, 3D LGE-MRI (2018 Atrial Segmentation Challenge)",
            "description": (
                "3D late gadolinium-enhanced MRI of atrial fibrillation patients (mostly University of Utah) from the "
                "2018 Atrial Segmentation Challenge (STACOM 2018), with the left atrial cavity mask. As preprocessed "
                "by UA-MT: z-scored over the whole scan, cropped in-plane around the atrium with random 10-20 voxel "
                "margins. Case ids are the challenge ids."
            ),
            "tensorImageSize": "3D",
            "modality": {"0": "MRI"},
            "sequence": {"0": "LGE"},
            "labels": {"0": "background", "1": "left atrium"},
            "license": (
                "No open licence: challenge data released for research (University of Utah CARMA/CIBC and other "
                "centres), redistributed by UA-MT; cite Xiong et al. 2021; research use, for benchmarks and tests only"
            ),
            "reference": (
                "Z. Xiong et al., A global benchmark of algorithms for segmenting the left atrium from late "
                "gadolinium-enhanced cardiac magnetic resonance imaging, Medical Image Analysis 67:101832, 2021."
            ),
            "source": "github.com/yulequan/UA-MT data/2018LA_Seg_Training Set/<id>/mri_norm2.h5 (image, label)",
            "spacing_note": (
                "Nominal: the HDF5 stores no geometry; the challenge states 0.625 mm isotropic. Written with a "
                "diagonal affine of {spacing} mm{block_note} on the axes as stored (x, y, z of the original NRRD, "
                "slices last); origin, orientation and crop offset are lost."
            ),
        },
    ),
}


@dataclass
class ConversionReport:
    """What :func:`convert_hdf5_dataset` did.

    Args:
        output_dir: the MSD folder written.
        converted: case ids written, sorted.
        failed: source file -> the problem, for the cases skipped.
    """

    output_dir: Path
    converted: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def read_hdf5_case(path: str | os.PathLike, labels: dict[int, str]) -> tuple[np.ndarray, np.ndarray]:
    """Reads one source volume and checks it.

    Args:
        path: an HDF5 file with 3D datasets ``image`` and ``label`` of one shape.
        labels: the source's label values (background included); any other value in ``label`` is an error.

    Returns:
        ``image`` as float32 and ``label`` as uint8, both ``[X, Y, Z]`` as stored.

    Raises:
        ValueError: naming ``path`` and the problem (not readable as HDF5, a dataset missing, not 3D, shapes that
            differ, non-finite intensities, label values that are not integers of ``labels``).
    """
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("image", "label") if k not in f]
            if missing:
                raise ValueError(f"{path}: no {' or '.join(repr(k) for k in missing)} dataset (has {sorted(f.keys())})")
            image, label = np.asarray(f["image"][()]), np.asarray(f["label"][()])
    except OSError as e:
        raise ValueError(f"{path}: not a readable HDF5 file ({e})") from e
    if image.ndim != 3 or label.ndim != 3:
        raise ValueError(f"{path}: image {image.shape} and label {label.shape} must both be 3D volumes")
    if image.shape != label.shape:
        raise ValueError(f"{path}: image shape {image.shape} differs from label shape {label.shape}")
    if not np.issubdtype(image.dtype, np.number) or not np.isfinite(image).all():
        raise ValueError(f"{path}: the image holds non-finite or non-numeric values")
    values = np.unique(label)
    unknown = [v for v in values.tolist() if v not in labels]
    if unknown:
        raise ValueError(f"{path}: label values {unknown[:10]} are not classes of this source ({sorted(labels)})")
    return image.astype(np.float32), label.astype(np.uint8)


def block_reduce(image: np.ndarray, label: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Averages ``image`` over ``block``-cubed blocks and gives each block its most frequent label.

    A trailing remainder of fewer than ``block`` voxels along an axis is dropped. Ties between labels go to the
    smaller value (background first).

    Args:
        image: ``[X, Y, Z]`` intensities.
        label: ``[X, Y, Z]`` class values, small non-negative integers.
        block: the factor (1: unchanged).

    Returns:
        ``image`` (float32) and ``label`` (uint8) of shape ``[X // block, Y // block, Z // block]``.

    Raises:
        ValueError: when ``block < 1`` or an axis is shorter than ``block``.
    """
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}.")
    if block == 1:
        return image.astype(np.float32), label.astype(np.uint8)
    out = [s // block for s in image.shape]
    if min(out) == 0:
        raise ValueError(f"a volume of shape {image.shape} is smaller than one {block}-voxel block.")
    crop = tuple(slice(0, s * block) for s in out)
    blocks = (out[0], block, out[1], block, out[2], block)
    mean = image[crop].astype(np.float64).reshape(blocks).mean(axis=(1, 3, 5)).astype(np.float32)
    grouped = label[crop].reshape(blocks).transpose(0, 2, 4, 1, 3, 5).reshape(*out, block**3)
    counts = np.stack([(grouped == v).sum(axis=-1) for v in range(int(label.max()) + 1)], axis=-1)
    return mean, counts.argmax(axis=-1).astype(np.uint8)


def _write_case(image: np.ndarray, label: np.ndarray, spacing: tuple[float, ...], out: Path, case: str) -> None:
    """Writes one case's image and label; neither final name exists unless both files were written whole."""
    import nibabel as nib

    affine = np.diag([*spacing, 1.0])
    targets = [out / "imagesTr" / f"{case}.nii.gz", out / "labelsTr" / f"{case}.nii.gz"]
    pictures = []
    for data, dtype in ((image, np.int16), (label, np.uint8)):
        picture = nib.Nifti1Image(data, affine)
        # int16 with a fitted slope and intercept (nibabel's scaling) keeps float intensities at half the size
        picture.set_data_dtype(dtype)
        picture.set_qform(affine, code=2)
        picture.set_sform(affine, code=2)
        picture.header.set_xyzt_units("mm", "sec")
        pictures.append(picture)
    with atomic_path(targets[0], suffix=".nii.gz") as tmp_image, atomic_path(targets[1], suffix=".nii.gz") as tmp_label:
        nib.save(pictures[0], str(tmp_image))
        nib.save(pictures[1], str(tmp_label))
        # the label is renamed first (the inner block), then the image: a failure between the two renames leaves a
        # label without image, which the datalist never lists, never an image with no label


def _find_cases(source: Hdf5Source, source_dir: Path) -> dict[str, Path]:
    cases: dict[str, Path] = {}
    for path in sorted(source_dir.rglob("*.h5")):
        case = source.case_id(path.relative_to(source_dir).as_posix())
        if case is not None:
            if case in cases:
                raise ValueError(f"{path} and {cases[case]} are both case {case} of {source.name}")
            cases[case] = path
    return cases


def convert_hdf5_dataset(
    source: str | Hdf5Source, source_dir: str | os.PathLike, output_dir: str | os.PathLike, block: int | None = None
) -> ConversionReport:
    """Converts a published HDF5 tree into an MSD folder (``dataset.json``, ``imagesTr``, ``labelsTr``).

    Args:
        source: a key of :data:`HDF5_SOURCES` (``acdc``, ``left_atrium``) or an :class:`Hdf5Source`.
        source_dir: the downloaded tree (3DCardiac's ``data/ACDC/data``, UA-MT's ``data/2018LA_Seg_Training Set``,
            or a folder above them); read only.
        output_dir: the MSD folder to write; must be new or empty.
        block: block-averaging factor (default: the source's, 2 for the left atrium as in the suite's copy).

    Returns:
        A :class:`ConversionReport`: the cases converted and, per skipped file, its problem.

    Raises:
        ValueError: an unknown source name, a ``source_dir`` without any case, an ``output_dir`` that holds files, two
            files of one case, or no case converted (the report's problems in the message).
    """
    if isinstance(source, str):
        if source not in HDF5_SOURCES:
            raise ValueError(f"unknown HDF5 source {source!r}; known: {sorted(HDF5_SOURCES)}")
        source = HDF5_SOURCES[source]
    block = source.default_block if block is None else int(block)
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}.")
    source_dir, out = Path(source_dir), Path(output_dir)
    if not source_dir.is_dir():
        raise ValueError(f"{source_dir}: not a folder")
    cases = _find_cases(source, source_dir)
    if not cases:
        raise ValueError(f"{source_dir}: no {source.name} volumes found (files named like {source.file_pattern!r})")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: the output folder already holds files; give a new or empty folder")

    spacing = tuple(s * block for s in source.spacing)
    report = ConversionReport(output_dir=out)
    for case, path in cases.items():
        try:
            image, label = block_reduce(*read_hdf5_case(path, source.labels), block)
            _write_case(image, label, spacing, out, case)
        except ValueError as e:
            message = str(e)
            report.failed[str(path)] = message if str(path) in message else f"{path}: {message}"
        else:
            report.converted.append(case)
    if not report.converted:
        raise ValueError(f"{source_dir}: no case converted: " + "; ".join(report.failed.values()))

    meta = dict(source.metadata)
    size = " x ".join(f"{s:g}" for s in spacing)
    block_note = "" if block == 1 else f" (the source's {source.spacing[0]:g} mm averaged over {block}^3 blocks)"
    meta["spacing_note"] = meta["spacing_note"].format(spacing=size, block_note=block_note)
    meta["numTraining"] = len(report.converted)
    meta["numTest"] = 0
    meta["training"] = [
        {"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in report.converted
    ]
    meta["test"] = []
    write_text_atomic(out / "dataset.json", json.dumps(meta, indent=2) + "\n")
    return report
