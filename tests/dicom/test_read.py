"""DICOM discovery on synthetic studies written by pydicom: grouping, selection, skips with reasons, safe names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bundle.dicom import SeriesError, discover_series, read_series, safe_name
from tests.helpers.dicom_series import MR_STORAGE, SR_STORAGE, new_instance


def _write(
    path: Path,
    study: str,
    series: str,
    index: int,
    modality: str = "MR",
    description: str = "T1",
    sop_class: str = MR_STORAGE,
    z: float = None,
    orientation=(1, 0, 0, 0, 1, 0),
    frames: int = 0,
) -> Path:
    ds = new_instance(sop_class)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.Modality, ds.SeriesDescription, ds.InstanceNumber = modality, description, index + 1
    if modality != "SR":
        ds.Rows = ds.Columns = 8
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.ImagePositionPatient = [0, 0, float(index if z is None else z)]
        ds.ImageOrientationPatient = list(orientation)
        ds.PixelSpacing, ds.SliceThickness = [0.5, 0.5], 2
        if frames:
            ds.NumberOfFrames = frames
        ds.PixelData = np.full((8, 8), index, np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
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
        ("1.2.3.1", "T1 MPRAGE", 3),
        ("1.2.3.2", "FLAIR", 2),
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
    assert series[0].key.startswith("1.2.3/evil-") and series[0].key == f"1.2.3/{safe_name('../../evil')}"


def test_distinct_uids_keep_distinct_names_after_sanitising():
    tricky = ["1.2.3", "1.2.3.", "1.2.3-", ".1.2.3", "1" * 97, "1" * 98, "1" * 96, "", "a/b", "a_b", "a b"]
    names = [safe_name(v) for v in tricky]
    assert len(set(names)) == len(tricky), names
    assert safe_name("1" * 96) == "1" * 96 and safe_name("1.2.3") == "1.2.3"  # valid names are kept as they are
    assert all(0 < len(n) <= 96 and not n.startswith(".") for n in names)


def test_missing_root_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent"):
        discover_series(tmp_path / "absent")


def _series(root: Path, zs, **kwargs):
    # file names and instance numbers deliberately out of spatial order
    for i, z in enumerate(zs):
        _write(root / f"{(7 * i) % 11:02d}.dcm", "1.2.3", "1.2.3.9", len(zs) - i, z=z, **kwargs)
    series, _ = discover_series(root)
    return series[0]


def test_a_clean_series_reads_in_spatial_order_with_its_geometry(tmp_path):
    zs = [4.0, 0.0, 8.0, 2.0, 6.0]
    volume, affine = read_series(_series(tmp_path, zs))
    assert volume.shape == (8, 8, 5)
    # each slice holds its instance number; sorted by position z = 0, 2, 4, 6, 8
    order = [len(zs) - zs.index(z) for z in sorted(zs)]
    assert [float(volume[0, 0, k]) for k in range(5)] == order
    np.testing.assert_allclose(affine, np.diag([-0.5, -0.5, 2.0, 1.0]), atol=1e-6)  # LPS identity -> RAS


@pytest.mark.parametrize(
    "zs, kwargs, message",
    [
        ([0, 2, 4, 8, 10], {}, r"1 missing slice\(s\) between positions 4.00 and 8.00"),
        ([0, 2, 4, 6.6, 8.6], {}, "uneven slice spacing"),
        ([0, 2, 2, 4], {}, "same position"),
        ([0, 2], {"frames": 2}, "multi-frame"),
        ([0], {}, "at least 2"),
    ],
)
def test_series_geometry_problems_are_named(tmp_path, zs, kwargs, message):
    with pytest.raises(SeriesError, match=message) as err:
        read_series(_series(tmp_path, zs, **kwargs))
    assert "series 1.2.3.9" in str(err.value)


def test_mixed_orientations_are_refused(tmp_path):
    _write(tmp_path / "a.dcm", "1.2.3", "1.2.3.9", 1, z=0)
    _write(tmp_path / "b.dcm", "1.2.3", "1.2.3.9", 2, z=2, orientation=(0, 1, 0, 0, 0, 1))
    with pytest.raises(SeriesError, match="mixed orientations"):
        read_series(discover_series(tmp_path)[0][0])


def test_real_mr_studies_are_discovered_and_read():
    from tests.helpers.shared_data import shared_path

    root = shared_path("dicom_mr")
    series, skipped = discover_series(root)
    crops = [s for s in series if s.description == "HippoCrop"]
    assert len(series) == 10 and len(crops) == 2 and not skipped
    for s in crops:
        volume, affine = read_series(s)
        assert volume.shape[2] == len(s.files) and np.isfinite(volume).all()
        np.testing.assert_allclose(np.abs(np.diag(affine)[:3]), 1.0, atol=1e-3)  # 1 mm crops


def test_a_series_over_the_voxel_limit_is_refused_from_its_headers(tmp_path, monkeypatch):
    import bundle.dicom.read as read

    series = _series(tmp_path, [0.0, 2.0, 4.0])
    monkeypatch.setattr(read, "MAX_VOXELS", 8 * 8 * 3 - 1)
    with pytest.raises(SeriesError, match=r"series 1\.2\.3\.9: 3 slices of 8x8 are 192 voxels, over the limit of 191"):
        read_series(series)
    monkeypatch.setattr(read, "MAX_VOXELS", 8 * 8 * 3)
    assert read_series(series)[0].shape == (8, 8, 3)


def test_a_slice_with_truncated_or_missing_pixel_data_is_named(tmp_path):
    import pydicom

    from bundle.dicom.read import check_pixel_data

    series = _series(tmp_path, [0.0, 2.0, 4.0])
    path = series.files[1]
    ds = pydicom.dcmread(str(path))
    ds.PixelData = ds.PixelData[:100]
    ds.save_as(str(path), write_like_original=False)
    with pytest.raises(SeriesError, match=rf"series 1\.2\.3\.9: {path}: truncated pixel data \(100 of 128 bytes\)"):
        read_series(series)
    del ds.PixelData
    ds.save_as(str(path), write_like_original=False)
    with pytest.raises(SeriesError, match=rf"{path}: no pixel data"):
        check_pixel_data(path, "1.2.3.9")
    check_pixel_data(series.files[0], "1.2.3.9")  # a whole slice passes
