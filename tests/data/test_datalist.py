"""Data: MSD datalists, seeded split, image discovery, input checks that name the file."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from bundle.data import CheckInputd, find_images, load_msd_datalist, split_datalist
from bundle.data.demo import write_demo_dataset
from tests.helpers.images import write_huge_nifti_header
from tests.helpers.shared_data import shared_path


def _nifti(path, array, affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


def test_msd_datalist_has_absolute_existing_paths(tmp_path):
    root = write_demo_dataset(tmp_path / "demo", num_cases=3)
    items = load_msd_datalist(root)
    assert len(items) == 3
    assert all(set(i) == {"image", "label"} for i in items)
    assert all(i["image"].startswith(str(root)) and (root / i["image"]).is_file() for i in items)


def test_msd_datalist_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset.json: not found"):
        load_msd_datalist(tmp_path)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(ValueError, match="invalid JSON"):
        load_msd_datalist(tmp_path)
    entry = {"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"}
    (tmp_path / "dataset.json").write_text(json.dumps({"training": [entry]}))
    with pytest.raises(FileNotFoundError, match=r"2 listed file\(s\) missing: .*imagesTr/a\.nii\.gz, .*labelsTr/a"):
        load_msd_datalist(tmp_path)


def test_split_is_seeded_disjoint_and_order_independent():
    items = [{"image": f"/d/img_{i:03d}.nii.gz", "label": f"/d/lab_{i:03d}.nii.gz"} for i in range(50)]
    a = split_datalist(items, val_fraction=0.1, test_fraction=0.2, seed=3)
    b = split_datalist(list(reversed(items)), val_fraction=0.1, test_fraction=0.2, seed=3)
    assert a == b
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (35, 5, 10)
    names = [i["image"] for part in a.values() for i in part]
    assert len(names) == len(set(names)) == 50
    assert split_datalist(items, seed=4)["test"] != a["test"]
    with pytest.raises(ValueError, match="nothing to train"):
        split_datalist(items[:2], val_fraction=0.5, test_fraction=0.4)


def test_find_images(tmp_path):
    root = write_demo_dataset(tmp_path / "demo", num_cases=2)
    assert len(find_images(root)) == 2  # MSD folder: imagesTr
    flat = tmp_path / "flat"
    _nifti(flat / "b.nii.gz", np.zeros((4, 4, 4), np.float32))
    _nifti(flat / "a.nii", np.zeros((4, 4, 4), np.float32))
    (flat / "notes.txt").write_text("not an image")
    assert [p["image"].rsplit("/", 1)[1] for p in find_images(flat)] == ["a.nii", "b.nii.gz"]
    with pytest.raises(FileNotFoundError, match="no NIfTI images"):
        find_images(_empty(tmp_path))
    with pytest.raises(ValueError, match="not a NIfTI"):
        find_images(flat / "notes.txt")


def _empty(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    return empty


def _rand():
    return np.random.default_rng(0).random((6, 7, 8), dtype=np.float32)


LOAD = Compose([LoadImaged(["image", "label"], image_only=True), EnsureChannelFirstd(["image", "label"])])


def test_check_input_accepts_a_good_pair(tmp_path):
    img = _nifti(tmp_path / "img.nii.gz", np.random.rand(6, 7, 8).astype(np.float32))
    lab = _nifti(tmp_path / "lab.nii.gz", np.zeros((6, 7, 8), np.uint8))
    out = CheckInputd()(LOAD({"image": str(img), "label": str(lab)}))
    assert out["image"].shape == (1, 6, 7, 8)


@pytest.mark.parametrize(
    "image,label,label_affine,message",
    [
        (np.full((6, 7, 8), math.nan, np.float32), None, None, r"img\.nii\.gz: 336 voxel\(s\) are NaN or infinite"),
        (np.random.rand(6, 7).astype(np.float32), None, None, r"img\.nii\.gz: expected a 3D image"),
        (_rand(), np.zeros((6, 7, 9), np.uint8), None, r"lab\.nii\.gz: label shape \(6, 7, 9\) differs"),
        (_rand(), np.zeros((6, 7, 8), np.uint8), np.diag([2.0, 1, 1, 1]), r"lab\.nii\.gz: label geometry"),
    ],
)
def test_check_input_rejects_bad_input_naming_the_file(tmp_path, image, label, label_affine, message):
    data = {"image": str(_nifti(tmp_path / "img.nii.gz", image))}
    keys = ["image"]
    if label is not None:
        data["label"] = str(_nifti(tmp_path / "lab.nii.gz", label, label_affine))
        keys.append("label")
    loaded = Compose([LoadImaged(keys, image_only=True), EnsureChannelFirstd(keys, channel_dim="no_channel")])(data)
    with pytest.raises(ValueError, match=message):
        CheckInputd()(loaded)


def test_real_hippocampus_datalist():
    root = shared_path("hippocampus")
    items = load_msd_datalist(root)
    assert len(items) == 208
    split = split_datalist(items, val_fraction=0.1, test_fraction=0.2, seed=0)
    assert len(split["test"]) >= 208 // 5
    first = CheckInputd()(LOAD(split["test"][0]))
    assert first["image"].shape == first["label"].shape


# --- bad input refused with the file named (issue #14) --------------------------------------------------------


def _signal(shape=(8, 8, 8)):
    return np.random.default_rng(1).random(shape, dtype=np.float32) + 1.0


@pytest.mark.parametrize(
    "image,spacing,message",
    [
        (np.zeros((8, 8, 8), np.float32), (1, 1, 1), r"img\.nii\.gz: no signal: every voxel is 0 "),
        (np.full((8, 8, 8), -3.5, np.float32), (1, 1, 1), r"img\.nii\.gz: no signal: every voxel is -3\.5 "),
        (_signal(), (0.3, 0.3, 6.0), r"img\.nii\.gz: voxel size 0\.3 x 0\.3 x 6 mm is too anisotropic \(ratio 20\.0"),
        (_signal(), (0.01, 0.01, 0.01), r"img\.nii\.gz: implausible voxel size 0\.01 x 0\.01 x 0\.01 mm"),
        (_signal(), (30, 30, 30), r"img\.nii\.gz: implausible voxel size 30 x 30 x 30 mm"),
    ],
)
def test_check_input_refuses_images_without_signal_or_with_implausible_geometry(tmp_path, image, spacing, message):
    path = _nifti(tmp_path / "img.nii.gz", image, np.diag([*spacing, 1.0]))
    loaded = LoadImaged("image", image_only=True, ensure_channel_first=True)({"image": str(path)})
    with pytest.raises(ValueError, match=message):
        CheckInputd(label_key=None)(loaded)


def test_check_input_keeps_good_anisotropic_images_within_the_documented_ratio(tmp_path):
    from bundle.data.checks import MAX_ANISOTROPY

    path = _nifti(tmp_path / "img.nii.gz", _signal(), np.diag([1.0, 1.0, MAX_ANISOTROPY, 1.0]))
    loaded = LoadImaged("image", image_only=True, ensure_channel_first=True)({"image": str(path)})
    assert CheckInputd(label_key=None)(loaded)["image"] is loaded["image"]


@pytest.mark.parametrize(
    "label,message",
    [
        (np.where(np.arange(512).reshape(8, 8, 8) % 3 == 0, 5, 1).astype(np.float32), r"label values \[5\] are not"),
        (np.full((8, 8, 8), -1, np.int16), r"label values \[-1\] are not among the model's classes \[0, 1, 2\]"),
        (np.full((8, 8, 8), 0.5, np.float32), r"lab\.nii\.gz: label has non-integer values \(e\.g\. \[0\.5\]\)"),
    ],
)
def test_check_input_refuses_labels_outside_channel_def(tmp_path, label, message):
    data = {
        "image": str(_nifti(tmp_path / "img.nii.gz", _signal())),
        "label": str(_nifti(tmp_path / "lab.nii.gz", label)),
    }
    loaded = LoadImaged(["image", "label"], image_only=True, ensure_channel_first=True)(data)
    check = CheckInputd(label_values=[0, 1, 2])
    with pytest.raises(ValueError, match=message):
        check(loaded)
    loaded["label"] = loaded["label"] * 0 + 2  # a label the model knows passes
    assert check(loaded)["label"] is loaded["label"]


def test_check_header_refuses_before_loading(tmp_path):
    from bundle.data.checks import MAX_VOXELS, CheckHeaderd

    check = CheckHeaderd(["image", "label"], allow_missing_keys=True)
    huge = write_huge_nifti_header(tmp_path / "huge.nii")
    with pytest.raises(
        ValueError, match=rf"huge\.nii: shape \(2000, 2000, 2000\) is 8000000000 voxels, over the limit of {MAX_VOXELS}"
    ):
        check({"image": str(huge)})
    four = _nifti(tmp_path / "four.nii.gz", np.zeros((4, 4, 4, 2), np.float32))
    with pytest.raises(ValueError, match=r"four\.nii\.gz: a 4D image of shape \(4, 4, 4, 2\) \(2 volumes\)"):
        check({"image": str(_nifti(tmp_path / "img.nii.gz", _signal())), "label": str(four)})
    cut = _nifti(tmp_path / "cut.nii", _signal())
    cut.write_bytes(cut.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"cut\.nii: truncated: 1000 bytes, the header needs 2400"):
        check({"image": str(cut)})
    (tmp_path / "junk.nii").write_bytes(b"not a header")
    with pytest.raises(ValueError, match=r"junk\.nii: unreadable NIfTI header"):
        check({"image": str(tmp_path / "junk.nii")})
    good = {
        "image": str(_nifti(tmp_path / "ok.nii", _signal())),
        "label": str(_nifti(tmp_path / "l.nii.gz", _signal()[..., None])),
    }
    assert check(good) == good  # a trailing axis of size 1 is one volume
    assert check({"image": object()})  # not a path: passes (a DICOM series)


def test_check_output_dir_refuses_the_input_folder_and_folders_inside_it(tmp_path):
    from bundle.data.datalist import check_output_dir

    image = _nifti(tmp_path / "in" / "a.nii.gz", _signal())
    for out in (tmp_path / "in", tmp_path / "in" / "sub" / "segs", tmp_path / "in" / ".." / "in"):
        with pytest.raises(ValueError, match=r"is, or is inside, the input folder .*in: outputs could overwrite"):
            check_output_dir(tmp_path / "in", out)
    with pytest.raises(ValueError, match="is, or is inside"):
        check_output_dir(image, tmp_path / "in")  # one file: its folder counts
    assert check_output_dir(tmp_path / "in", tmp_path / "out") == (tmp_path / "out").resolve()
    assert check_output_dir(tmp_path / "in", tmp_path / "inside_not") == (tmp_path / "inside_not").resolve()
    assert check_output_dir("", tmp_path / "out") == (tmp_path / "out").resolve()
