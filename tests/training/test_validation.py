"""The up-front check of training inputs: every bad file named, in one error, and no exception in a worker thread."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose, EnsureTyped, LoadImaged, SpatialPadd

from bundle.data import CheckInputd
from bundle.training.validation import CheckedCacheDataset, InputError, check_inputs, label_value_problem
from tests.helpers.bundle_runs import write_msd


def _load() -> Compose:
    return Compose(
        [
            LoadImaged(["image", "label"], ensure_channel_first=True, image_only=True, allow_missing_keys=True),
            CheckInputd("image", label_key="label", spatial_dims=3),
            EnsureTyped(["image", "label"], dtype=[torch.float32, torch.uint8], allow_missing_keys=True),
            SpatialPadd(["image", "label"], spatial_size=[40, 40, 40], allow_missing_keys=True),
        ]
    )


def _items(root: Path) -> list[dict]:
    return [
        {"image": str(root / "imagesTr" / f"case_{i}.nii.gz"), "label": str(root / "labelsTr" / f"case_{i}.nii.gz")}
        for i in range(6)
    ]


@pytest.fixture()
def bad_msd(tmp_path) -> Path:
    """Six phantoms: case 1 has a NaN voxel, case 2 a label of the wrong shape, case 3 a label value of 7, case 4
    is truncated."""
    root = write_msd(tmp_path / "msd")
    img = nib.load(str(root / "imagesTr" / "case_1.nii.gz"))
    data = img.get_fdata().astype(np.float32)
    data[2, 3, 4] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), str(root / "imagesTr" / "case_1.nii.gz"))
    lab = nib.load(str(root / "labelsTr" / "case_2.nii.gz"))
    nib.save(nib.Nifti1Image(np.asarray(lab.dataobj)[:-2], lab.affine), str(root / "labelsTr" / "case_2.nii.gz"))
    lab = nib.load(str(root / "labelsTr" / "case_3.nii.gz"))
    seven = np.asarray(lab.dataobj).copy()
    seven[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(seven, lab.affine), str(root / "labelsTr" / "case_3.nii.gz"))
    path = root / "imagesTr" / "case_4.nii.gz"
    path.write_bytes(path.read_bytes()[:300])
    return root


@pytest.mark.parametrize("num_workers", [0, 3])
def test_every_bad_case_is_named_with_its_problem_and_good_ones_are_cached(bad_msd, num_workers):
    items = _items(bad_msd)
    ds = CheckedCacheDataset(items, _load(), num_workers=num_workers, class_values=[1, 2], name="train", progress=False)
    problems = "\n".join(ds.problems)
    assert len(ds.problems) == 4, problems
    assert f"train: {items[1]['image']}: 1 voxel(s) are NaN or infinite" in problems
    assert f"train: {items[2]['label']}: label shape (30, 40, 32) differs" in problems
    assert f"train: {items[3]['label']}: label value(s) [7] not among the classes [0, 1, 2]" in problems
    assert f"train: {items[4]['image']}: " in problems
    assert "case_0" not in problems and "case_5" not in problems
    # the good cases are cached, loaded and padded
    assert ds._cache[0]["image"].shape == (1, 40, 40, 40) and ds._cache[5]["label"].dtype == torch.uint8
    # any access to a dataset with problems raises them, in the calling thread
    with pytest.raises(InputError, match="4 of 6 training and validation case"):
        ds[0]


def test_check_inputs_lists_the_problems_of_every_dataset_in_one_error(bad_msd):
    items = _items(bad_msd)
    train = CheckedCacheDataset(items[:4], _load(), class_values=[1, 2], name="train", progress=False)
    val = CheckedCacheDataset(items[4:], _load(), class_values=[1, 2], name="validate", progress=False)
    with pytest.raises(InputError) as err:
        check_inputs(train, val)
    message = str(err.value)
    assert message.startswith("4 of 6 training and validation case(s) cannot be used")
    assert f"  - train: {items[1]['image']}" in message and f"  - validate: {items[4]['image']}" in message
    good = CheckedCacheDataset([items[0], items[5]], _load(), class_values=[1, 2], name="train", progress=False)
    assert check_inputs(good, None) == 2 and good[1]["image"].shape == (1, 40, 40, 40)


def test_cases_beyond_the_cache_are_checked_too(bad_msd):
    items = [_items(bad_msd)[i] for i in (0, 5, 3)]  # the bad one is not cached at cache_rate 0.5
    ds = CheckedCacheDataset(items, _load(), cache_rate=0.5, class_values=[1, 2], progress=False)
    assert ds.cache_num == 1 and len(ds._cache) == 1
    assert len(ds.problems) == 1 and items[2]["label"] in ds.problems[0]


def test_label_values_checked_against_the_classes():
    label = torch.zeros(1, 4, 4, 4)
    assert label_value_problem({"label": label}, [1, 2]) is None
    assert label_value_problem({"image": label}, [1, 2]) is None  # unlabelled case
    assert label_value_problem({"label": label + 7}, None) is None  # unchecked
    label[0, 0, 0, 0] = 0.5
    assert "non-integer" in label_value_problem({"label": label}, [1, 2])
    label[0, 0, 0, 0] = 3
    assert "label value(s) [3] not among the classes [0, 1, 2]" in label_value_problem({"label": label}, [1, 2])
