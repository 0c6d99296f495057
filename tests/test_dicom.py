"""DICOM discovery on synthetic studies written by pydicom: grouping, selection, skips with reasons, safe names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bundle.dicom import discover_series, safe_name

MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.11"


def _write(path: Path, study: str, series: str, index: int, modality: str = "MR", description: str = "T1",
           sop_class: str = MR_STORAGE) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.Modality, ds.SeriesDescription, ds.InstanceNumber = modality, description, index + 1
    if modality != "SR":
        ds.Rows = ds.Columns = 8
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, float(index)], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [1, 1], 1
        ds.PixelData = np.full((8, 8), index, np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.save_as(str(path), write_like_original=False)
    return path


@pytest.fixture()
def tree(tmp_path) -> Path:
    root = tmp_path / "in"
    for i in range(3):  # a clean MR series, nested
        _write(root / "patient" / "study" / "t1" / f"{i}.dcm", "1.2.3", "1.2.3.1", i, description="T1 MPRAGE")
    for i in range(2):  # two more series mixed in one flat folder: FLAIR MR and a CT
        _write(root / "mixed" / f"flair{i}", "1.2.3", "1.2.3.2", i, description="FLAIR")
        _write(root / "mixed" / f"ct{i}", "1.2.3", "1.2.3.3", i, modality="CT", description="CT head")
    _write(root / "mixed" / "report", "1.2.3", "1.2.3.4", 0, modality="SR", description="report", sop_class=SR_STORAGE)
    (root / "mixed" / "corrupt.dcm").write_bytes(b"DICM but not really" * 3)
    (root / "notes.txt").write_text("not DICOM")
    return root


def test_discovery_groups_series_and_explains_every_skip(tree):
    before = sorted((p, p.stat().st_mtime_ns) for p in tree.rglob("*"))
    series, skipped = discover_series(tree)
    assert [(s.series_uid, s.description, len(s.files)) for s in series] == [
        ("1.2.3.1", "T1 MPRAGE", 3), ("1.2.3.2", "FLAIR", 2)
    ]
    reasons = {s.what.split(" (")[0]: s.reason for s in skipped}
    assert reasons["series 1.2.3.3"] == "modality CT, not MR"
    assert reasons["series 1.2.3.4"] == "non-image object: structured report"
    unreadable = [s for s in skipped if s.reason.startswith("not a readable DICOM file")]
    assert sorted(Path(s.what).name for s in unreadable) == ["corrupt.dcm", "notes.txt"]
    assert sorted((p, p.stat().st_mtime_ns) for p in tree.rglob("*")) == before  # input untouched


def test_description_pattern_and_any_modality(tree):
    series, skipped = discover_series(tree, description="(?i)flair")
    assert [s.series_uid for s in series] == ["1.2.3.2"]
    assert any("does not match" in s.reason for s in skipped)
    series, _ = discover_series(tree, modality=None)
    assert [s.series_uid for s in series] == ["1.2.3.1", "1.2.3.2", "1.2.3.3"]  # still no SR


def test_safe_names_cannot_escape_the_output_folder(tmp_path):
    for hostile in ["../../etc/passwd", "..", "/abs/path", "a/../../b", "séries 1", "", "...."]:
        name = safe_name(hostile)
        assert name and "/" not in name and not name.startswith(".") and ".." not in name
        assert (tmp_path / name).resolve().parent == tmp_path.resolve()
    assert safe_name("1.2.840.10008.5") == "1.2.840.10008.5"


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # the hostile UID is invalid on purpose
def test_a_uid_with_a_path_in_it_is_sanitised(tmp_path):
    root = tmp_path / "in"
    _write(root / "x.dcm", "1.2.3", "../../evil", 0)
    series, _ = discover_series(root)
    assert series[0].key == "1.2.3/evil"


def test_missing_root_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent"):
        discover_series(tmp_path / "absent")
