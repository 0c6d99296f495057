"""Windows shaped by voxel spacing: the plan, the spacing read from a header, and batches of one window."""

from __future__ import annotations

from collections import Counter

import nibabel as nib
import numpy as np
import pytest

from bundle.data import WindowBatchSampler, add_windows, image_spacing, plan_window, window_groups

ROI = (48, 64, 48)


@pytest.mark.parametrize(
    "spacing, window",
    [
        ((1.0, 1.0, 1.0), ROI),  # the hippocampus
        ((0.94, 1.5, 0.94), ROI),  # ibsr: anisotropic, but below the ratio
        ((10.0, 1.5, 1.5), (16, 96, 96)),  # acdc, slices on axis 0
        ((1.25, 1.25, 7.7), (96, 96, 16)),  # chaos_t2, slices on axis 2
        ((1.25, 7.99, 1.25), (96, 16, 96)),
        ((3.0, 3.0, 3.0), ROI),  # every axis equally coarse is not thick
    ],
)
def test_plan_window_flattens_thick_axes_within_the_voxel_budget(spacing, window):
    planned = plan_window(spacing, ROI, multiple=16, thick_ratio=3.0)
    assert planned == window
    assert np.prod(planned) <= np.prod(ROI) and all(s % 16 == 0 for s in planned)


def test_plan_window_two_thick_axes_and_2d():
    # two thick axes share nothing: each gets the minimum, the thin axis the rest of the budget (rounded down)
    assert plan_window((5.0, 5.0, 1.0), ROI, 16, 3.0) == (16, 16, 576)
    assert plan_window((1.0, 4.0), (64, 64), 16, 3.0) == (256, 16)
    assert plan_window((1.0, 2.9), (64, 64), 16, 3.0) == (64, 64)


def test_plan_window_off_and_refusals():
    assert plan_window((10.0, 1.5, 1.5), ROI, 16, 0.0) == ROI
    with pytest.raises(ValueError, match="axes"):
        plan_window((1.0, 1.0), ROI)
    with pytest.raises(ValueError, match="positive and finite"):
        plan_window((1.0, 0.0, 1.0), ROI)
    with pytest.raises(ValueError, match="positive and finite"):
        plan_window((1.0, float("nan"), 1.0), ROI)
    with pytest.raises(ValueError, match="not a multiple of 16"):
        plan_window((1.0, 1.0, 1.0), (40, 64, 48))


def _nifti(path, shape, affine):
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), affine), str(path))
    return str(path)


def test_image_spacing_is_in_ras_axis_order(tmp_path):
    # stored P, S, R (mscmr's axes) with the slices (8 mm) on the last axis: in RAS order the slices come first
    affine = np.zeros((4, 4))
    affine[1, 0], affine[2, 1], affine[0, 2], affine[3, 3] = -1.25, 1.5, 8.0, 1.0
    path = _nifti(tmp_path / "psr.nii.gz", (20, 24, 6), affine)
    assert image_spacing(path) == pytest.approx((8.0, 1.25, 1.5))
    assert image_spacing(_nifti(tmp_path / "ras.nii.gz", (4, 4, 4), np.diag([1.0, 2.0, 3.0, 1.0]))) == (1.0, 2.0, 3.0)


def test_image_spacing_names_an_unreadable_file(tmp_path):
    bad = tmp_path / "truncated.nii.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00 not a nifti")
    with pytest.raises(ValueError, match="truncated.nii.gz"):
        image_spacing(str(bad))


def test_add_windows_plans_each_item_and_leaves_the_list_alone(tmp_path):
    thick = _nifti(tmp_path / "thick.nii.gz", (8, 8, 4), np.diag([1.25, 1.25, 7.7, 1.0]))
    iso = _nifti(tmp_path / "iso.nii.gz", (8, 8, 8), np.eye(4))
    items = [{"image": thick, "label": "a"}, {"image": iso, "label": "b"}]
    planned = add_windows(items, ROI, 16, 3.0)
    assert [p["window"] for p in planned] == [[96, 96, 16], list(ROI)]
    assert planned[0]["label"] == "a" and "window" not in items[0]
    # off: no header is read (a missing file would fail) and no window is written
    assert add_windows([{"image": str(tmp_path / "missing.nii.gz")}], ROI, 16, 0.0) == [
        {"image": str(tmp_path / "missing.nii.gz")}
    ]
    assert window_groups(planned + [{"image": iso}, {"image": thick, "window": [96, 96, 16]}]) == [0, 1, 2, 0]


def _groups(n_a: int, n_b: int) -> list[int]:
    return [0] * n_a + [1] * n_b


def test_batches_hold_one_window_and_every_item_once_an_epoch():
    groups = _groups(9, 6)
    sampler = WindowBatchSampler(groups, batch_size=4, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 2 + 1  # whole batches only: 9 -> 2, 6 -> 1
    for b in batches:
        assert len(b) == 4 and len({groups[i] for i in b}) == 1
    used = [i for b in batches for i in b]
    assert len(used) == len(set(used))
    # each iteration is the next epoch, reproducible from the seed
    second = list(sampler)
    assert second != batches
    again = WindowBatchSampler(groups, batch_size=4, seed=3)
    assert list(again) == batches and list(again) == second
    again.set_epoch(0)
    assert list(again) == batches


def test_a_group_smaller_than_a_batch_is_one_batch():
    batches = list(WindowBatchSampler(_groups(1, 8), batch_size=4))
    assert sorted(len(b) for b in batches) == [1, 4, 4]


def test_replicas_get_different_batches_and_as_many():
    groups = _groups(8, 5)  # 3 whole batches for 2 replicas: padded to 2 each
    a = list(WindowBatchSampler(groups, batch_size=4, num_replicas=2, rank=0))
    b = list(WindowBatchSampler(groups, batch_size=4, num_replicas=2, rank=1))
    assert len(a) == len(b) == 2 and a != b
    with pytest.raises(ValueError, match="rank"):
        WindowBatchSampler(groups, batch_size=4, num_replicas=2, rank=2)


def test_weighted_batches_draw_each_item_as_often_as_its_weight():
    groups = _groups(4, 2)
    weights = [1.0, 1.0, 1.0, 1.0, 4.0, 4.0]  # the small group holds 8 of the weight's 12
    sampler = WindowBatchSampler(groups, batch_size=3, weights=weights, num_batches=3000, seed=0)
    counts = Counter()
    for batch in sampler:
        assert len(batch) == 3 and len({groups[i] for i in batch}) == 1
        counts.update(batch)
    total = sum(counts.values())
    for i, w in enumerate(weights):
        assert counts[i] / total == pytest.approx(w / sum(weights), abs=0.02)
    # the default length is MONAI's weighted sampler's: the items in batches, shared by the replicas
    assert len(WindowBatchSampler(groups, batch_size=2, weights=weights)) == 3
    assert len(WindowBatchSampler(groups, batch_size=2, weights=weights, num_replicas=2, rank=1)) == 1
    with pytest.raises(ValueError, match="weights"):
        WindowBatchSampler(groups, batch_size=2, weights=[1.0])
