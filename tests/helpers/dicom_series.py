"""Synthetic MR DICOM series written with pydicom, complete enough for highdicom and dciodvfy."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.11"


def new_instance(sop_class: str):
    """An empty dataset of ``sop_class`` with its file meta (explicit VR little endian) and a fresh SOP UID."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.is_little_endian, ds.is_implicit_VR = True, False
    return ds


def write_mr_series(
    folder: Path,
    volume: np.ndarray,
    study_uid: str,
    series_uid: str,
    description: str = "T1",
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    origin: Sequence[float] = (-20.0, -30.0, -10.0),
    skip_slices: Sequence[int] = (),
    prefix: str = "",
    frame_of_reference: str | None = None,
) -> Path:
    """Writes ``volume [X, Y, Z]`` as single-frame MR instances (axial, slice k at z = origin + k * spacing).

    Rows run along Y and columns along X (DICOM's in-plane order); ``skip_slices`` leaves slices out (a gap).
    """
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    frame_of_reference = frame_of_reference or generate_uid(entropy_srcs=[study_uid, "for"])
    pixels = np.clip(volume, 0, 4000).astype(np.uint16)
    for k in range(volume.shape[2]):
        if k in skip_slices:
            continue
        ds = new_instance(MR_STORAGE)
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^Test", "P001", "", "O"
        ds.StudyInstanceUID, ds.StudyID, ds.StudyDate, ds.StudyTime = study_uid, "1", "20260101", "120000"
        ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series_uid, 1, description
        ds.Modality, ds.Manufacturer, ds.InstanceNumber = "MR", "SegOne tests", k + 1
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_of_reference, ""
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "GR", "SP", "", "3D"
        ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = 8.0, 3.0, 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.ImagePositionPatient = [float(origin[0]), float(origin[1]), float(origin[2] + k * spacing[2])]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # row spacing (Y), column spacing (X)
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.ascontiguousarray(pixels[:, :, k].T).tobytes()  # [rows (Y), columns (X)]
        ds.save_as(str(folder / f"{prefix}{k:03d}.dcm"), write_like_original=False)
    return folder


def write_sr(path: Path, study_uid: str) -> Path:
    """A minimal non-image object (Basic Text SR header) in the study."""
    from pydicom.uid import generate_uid

    ds = new_instance(SR_STORAGE)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study_uid, generate_uid(), "SR"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), write_like_original=False)
    return path
