"""HDF5 sources (ACDC, left atrium) to MSD folders: geometry, values, block averaging, bad files, and a round trip
through the suite's own copies when ../shared is present."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from bundle.cli.convert_hdf5 import main
from bundle.data import load_msd_datalist, patient_id
from bundle.data.convert import HDF5_SOURCES, block_reduce, convert_hdf5_dataset, read_hdf5_case
from bundle.utils.io import TEMP_MARK
from tests.helpers.shared_data import shared_path


def write_h5(path: Path, image: np.ndarray, label: np.ndarray | None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=image, compression="gzip")
        if label is not None:
            f.create_dataset("label", data=label, compression="gzip")
    return path


def acdc_volume(rng: np.random.Generator, slices: int = 6) -> tuple[np.ndarray, np.ndarray]:
    image = rng.random((slices, 20, 18)).astype(np.float32)
    label = np.zeros(image.shape, np.uint8)
    label[:, 4:10, 4:10], label[:, 10:14, 6:12], label[1:3, 2:4, 2:4] = 3, 2, 1
    return image, label


def tree_hashes(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def acdc_tree(tmp_path) -> Path:
    """3DCardiac's layout: two patients' volumes, and 2D slice files that are not cases."""
    rng = np.random.default_rng(0)
    src = tmp_path / "3DCardiac" / "data" / "ACDC" / "data"
    for patient in ("001", "002"):
        for frame in ("01", "02"):
            write_h5(src / f"patient{patient}_frame{frame}.h5", *acdc_volume(rng))
    write_h5(src / "patient003_frame01_slice_1.h5", *(a[0] for a in acdc_volume(rng)))
    return tmp_path / "3DCardiac"


def test_acdc_tree_becomes_an_msd_folder_with_nominal_geometry(acdc_tree, tmp_path):
    out = tmp_path / "acdc"
    report = convert_hdf5_dataset("acdc", acdc_tree, out)

    assert report.converted == ["acdc_001_frame01", "acdc_001_frame02", "acdc_002_frame01", "acdc_002_frame02"]
    assert report.failed == {}
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"] == {"0": "background", "1": "right ventricle", "2": "myocardium", "3": "left ventricle"}
    assert meta["numTraining"] == 4 and "10 x 1.5 x 1.5 mm" in meta["spacing_note"]
    items = load_msd_datalist(str(out))
    assert len(items) == 4
    # the frames of a patient share a patient id, so a seeded split keeps them together
    assert len({patient_id(item["image"]) for item in items}) == 2

    source = acdc_tree / "data" / "ACDC" / "data" / "patient001_frame02.h5"
    with h5py.File(source) as f:
        image, label = f["image"][()], f["label"][()]
    picture = nib.load(out / "imagesTr" / "acdc_001_frame02.nii.gz")
    assert picture.get_data_dtype() == np.int16
    np.testing.assert_allclose(np.diag(picture.affine), [10.0, 1.5, 1.5, 1.0])
    assert picture.header.get_sform(coded=True)[1] == 2
    # int16 with a fitted slope: within one quantisation step of the float source
    np.testing.assert_allclose(picture.get_fdata(), image, atol=(image.max() - image.min()) / 65535 + 1e-7)
    written = nib.load(out / "labelsTr" / "acdc_001_frame02.nii.gz")
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(written.dataobj), label)


def test_block_reduce_averages_and_takes_the_majority_label():
    image = np.arange(4 * 4 * 5, dtype=np.float32).reshape(4, 4, 5)
    label = np.zeros((4, 4, 5), np.uint8)
    label[0:2, 0:2, 0:2] = 1
    label[0, 0, 0] = 0  # 7 of 8 voxels: label 1
    label[2:4, 2:4, 0:2] = 2
    label[2:4, 2:4, 0] = 0  # 4 of 8: a tie, background wins
    mean, majority = block_reduce(image, label, 2)

    assert mean.shape == majority.shape == (2, 2, 2)  # the odd last slice is dropped
    assert mean[0, 0, 0] == pytest.approx(image[0:2, 0:2, 0:2].mean())
    assert mean[1, 1, 1] == pytest.approx(image[2:4, 2:4, 2:4].mean())
    assert majority[0, 0, 0] == 1 and majority[1, 1, 0] == 0 and majority.sum() == 1
    with pytest.raises(ValueError, match="smaller than one 2-voxel block"):
        block_reduce(image[:1], label[:1], 2)


def test_left_atrium_is_halved_by_default(tmp_path):
    rng = np.random.default_rng(1)
    src = tmp_path / "UA-MT" / "data" / "2018LA_Seg_Training Set"
    image = rng.normal(size=(16, 12, 9)).astype(np.float32)
    label = np.zeros(image.shape, np.uint8)
    label[4:12, 4:8, 2:8] = 1
    write_h5(src / "06SR5RBREL16DQ6M8LWS" / "mri_norm2.h5", image, label)
    write_h5(src / "2XL5HSFSE93RMOJDRGR4" / "mri_norm2.h5", image[::-1].copy(), label[::-1].copy())

    report = convert_hdf5_dataset("left_atrium", tmp_path / "UA-MT", tmp_path / "la")
    assert report.converted == ["left_atrium_06SR5RBREL16DQ6M8LWS", "left_atrium_2XL5HSFSE93RMOJDRGR4"]
    picture = nib.load(tmp_path / "la" / "imagesTr" / "left_atrium_06SR5RBREL16DQ6M8LWS.nii.gz")
    assert picture.shape == (8, 6, 4)
    np.testing.assert_allclose(np.diag(picture.affine), [1.25, 1.25, 1.25, 1.0])
    expected, majority = block_reduce(image, label, 2)
    np.testing.assert_allclose(picture.get_fdata(), expected, atol=(np.ptp(expected)) / 65535 + 1e-6)
    written = nib.load(tmp_path / "la" / "labelsTr" / "left_atrium_06SR5RBREL16DQ6M8LWS.nii.gz")
    np.testing.assert_array_equal(np.asarray(written.dataobj), majority)
    meta = json.loads((tmp_path / "la" / "dataset.json").read_text())
    assert meta["labels"] == {"0": "background", "1": "left atrium"}
    assert "1.25 x 1.25 x 1.25 mm" in meta["spacing_note"] and "averaged over 2^3 blocks" in meta["spacing_note"]

    full = convert_hdf5_dataset("left_atrium", tmp_path / "UA-MT", tmp_path / "la_full", block=1)
    assert len(full.converted) == 2
    assert nib.load(tmp_path / "la_full" / "labelsTr" / "left_atrium_06SR5RBREL16DQ6M8LWS.nii.gz").shape == (16, 12, 9)


def test_bad_files_are_named_and_skipped_the_rest_converted_inputs_untouched(acdc_tree, tmp_path):
    src = acdc_tree / "data" / "ACDC" / "data"
    rng = np.random.default_rng(2)
    truncated = src / "patient004_frame01.h5"
    truncated.write_bytes((src / "patient001_frame01.h5").read_bytes()[:300])
    no_label = write_h5(src / "patient005_frame01.h5", rng.random((4, 8, 8)).astype(np.float32), None)
    image, label = acdc_volume(rng)
    mismatched = write_h5(src / "patient006_frame01.h5", image, label[:, :10])
    image_nan = image.copy()
    image_nan[0, 0, 0] = np.nan
    with_nan = write_h5(src / "patient007_frame01.h5", image_nan, label)
    label_bad = label.copy()
    label_bad[0, 0, 0] = 9
    unknown = write_h5(src / "patient008_frame01.h5", image, label_bad)
    flat = write_h5(src / "patient009_frame01.h5", image[0], label[0])
    before = tree_hashes(acdc_tree)

    report = convert_hdf5_dataset("acdc", acdc_tree, tmp_path / "acdc")

    assert len(report.converted) == 4
    problems = report.failed
    assert set(problems) == {str(p) for p in (truncated, no_label, mismatched, with_nan, unknown, flat)}
    assert "not a readable HDF5 file" in problems[str(truncated)]
    assert "no 'label' dataset" in problems[str(no_label)]
    assert "differs from label shape" in problems[str(mismatched)]
    assert "non-finite" in problems[str(with_nan)]
    assert "label values [9]" in problems[str(unknown)]
    assert "must both be 3D" in problems[str(flat)]
    assert all(message.startswith(path) for path, message in problems.items())
    assert tree_hashes(acdc_tree) == before
    written = sorted(p.name for p in (tmp_path / "acdc").rglob("*") if p.is_file())
    assert not [n for n in written if TEMP_MARK in n]
    assert len(written) == 4 + 4 + 1  # images, labels, dataset.json: nothing of the skipped cases
    assert json.loads((tmp_path / "acdc" / "dataset.json").read_text())["numTraining"] == 4


def test_refusals(acdc_tree, tmp_path):
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="already holds files"):
        convert_hdf5_dataset("acdc", acdc_tree, occupied)
    assert (occupied / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="unknown HDF5 source 'brats'"):
        convert_hdf5_dataset("brats", acdc_tree, tmp_path / "x")
    with pytest.raises(ValueError, match="no left_atrium volumes found"):
        convert_hdf5_dataset("left_atrium", acdc_tree, tmp_path / "x")
    with pytest.raises(ValueError, match="not a folder"):
        convert_hdf5_dataset("acdc", tmp_path / "missing", tmp_path / "x")
    with h5py.File(tmp_path / "empty.h5", "w"):
        pass
    with pytest.raises(ValueError, match="empty.h5: no 'image' or 'label' dataset"):
        read_hdf5_case(tmp_path / "empty.h5", {0: "background"})


def test_command_reports_and_sets_the_exit_status(acdc_tree, tmp_path, capsys):
    assert main(["--source", "acdc", "--input_dir", str(acdc_tree), "--output_dir", str(tmp_path / "ok")]) == 0
    assert "acdc: 4 cases written" in capsys.readouterr().out

    bad = acdc_tree / "data" / "ACDC" / "data" / "patient010_frame01.h5"
    bad.write_bytes(b"not hdf5")
    assert main(["--source", "acdc", "--input_dir", str(acdc_tree), "--output_dir", str(tmp_path / "some")]) == 1
    captured = capsys.readouterr()
    assert "4 cases written" in captured.out and "1 skipped" in captured.out
    assert f"skipped: {bad}: not a readable HDF5 file" in captured.err
    assert main(["--source", "acdc", "--input_dir", str(acdc_tree), "--output_dir", str(tmp_path / "ok")]) == 1
    assert "already holds files" in capsys.readouterr().err


@pytest.mark.parametrize("name, block", [("acdc", 1), ("left_atrium", 2)])
def test_round_trip_reproduces_the_suite_copy(tmp_path, name, block):
    """Sources rebuilt from ../shared's NIfTI (the left atrium at 0.625 mm by repeating each voxel 2x2x2) convert
    back to the same geometry, the same labels and the same intensities within int16 quantisation."""
    folder = shared_path(name)
    meta = json.loads((folder / "dataset.json").read_text())
    source = HDF5_SOURCES[name]
    assert {int(k): v for k, v in meta["labels"].items()} == source.labels
    src = tmp_path / "src"
    cases = [Path(item["image"]).name[: -len(".nii.gz")] for item in meta["training"][:3]]
    for case in cases:
        image = nib.load(folder / "imagesTr" / f"{case}.nii.gz").get_fdata(dtype=np.float32)
        label = np.asarray(nib.load(folder / "labelsTr" / f"{case}.nii.gz").dataobj)
        for axis in range(3):
            image, label = np.repeat(image, block, axis), np.repeat(label, block, axis)
        if name == "acdc":
            path = src / f"patient{case.split('_')[1]}_{case.split('_')[2]}.h5"
        else:
            path = src / case[len("left_atrium_") :] / "mri_norm2.h5"
        write_h5(path, image, label)

    report = convert_hdf5_dataset(name, src, tmp_path / name)
    assert report.converted == sorted(cases) and not report.failed
    for case in cases:
        for part in ("imagesTr", "labelsTr"):
            ours, theirs = nib.load(tmp_path / name / part / f"{case}.nii.gz"), nib.load(
                folder / part / f"{case}.nii.gz"
            )
            assert ours.shape == theirs.shape
            np.testing.assert_allclose(ours.affine, theirs.affine)
            a, b = ours.get_fdata(), theirs.get_fdata()
            if part == "labelsTr":
                np.testing.assert_array_equal(a, b)
            else:
                np.testing.assert_allclose(a, b, atol=2 * np.ptp(b) / 65535)
