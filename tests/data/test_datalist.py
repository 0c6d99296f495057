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
