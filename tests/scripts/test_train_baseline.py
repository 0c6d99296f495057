"""The U-Net baseline script: trained on a data set's own classes, scored with the bundle's metrics."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers.bundle_runs import ROOT, write_msd
from tests.helpers.scripts import load_script

pytestmark = pytest.mark.slow


def test_baseline_trains_on_a_folders_own_classes_and_scores_them(tmp_path):
    baseline = load_script(ROOT / "scripts" / "experiments" / "train_baseline.py")
    # a folder naming three structures of its own (the phantom uses two of them)
    labels = {"0": "background", "1": "liver", "2": "spleen", "3": "left kidney"}
    data = write_msd(tmp_path / "abdomen", num_cases=6, labels=labels)
    out = tmp_path / "out"
    args = ["--dataset_dir", str(data), "--output_dir", str(out), "--budget", "4", "--val_every", "1"]
    assert baseline.main([*args, "--set", "roi_size=[32,32,32]", "--set", "crop_sampling='classes'"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["classes"]) == {"liver", "spleen", "left kidney"}
    assert metrics["run"]["steps"] >= 1 and metrics["run"]["epochs"] >= 1
    assert len(metrics["cases"]) == 1  # a fifth of 6 cases
    for arch in ("unet", "basicunet", "dynunet"):
        net = baseline.build_network(arch, 5).eval()
        assert net(torch.zeros(1, 1, 32, 32, 32)).shape == (1, 5, 32, 32, 32), arch


@pytest.mark.parametrize("name", ["model.pt", "../metrics.json", "sub/metrics.json"])
def test_the_metrics_file_stays_a_json_file_in_the_output_folder(tmp_path, name):
    with pytest.raises(SystemExit):
        load_script(ROOT / "scripts" / "experiments" / "train_baseline.py").main(
            ["--dataset_dir", str(tmp_path), "--eval_only", "--metrics_name", name]
        )


def test_an_epoch_budget_trains_exactly_that_many_epochs(tmp_path):
    baseline = load_script(ROOT / "scripts" / "experiments" / "train_baseline.py")
    data = write_msd(tmp_path / "data", num_cases=10)
    out = tmp_path / "out"
    args = ["--dataset_dir", str(data), "--output_dir", str(out), "--max_epochs", "2", "--val_every", "5"]
    assert baseline.main([*args, "--device", "cpu", "--set", "roi_size=[32,32,32]"]) == 0
    run = json.loads((out / "metrics.json").read_text())["run"]
    # validated at the last epoch although val_every is larger; 7 training cases, batches of 4, the last dropped
    assert run["epochs"] == 2 and run["max_epochs"] == 2 and run["steps"] == 2 and run["device"] == "cpu"
    assert [h["epoch"] for h in run["history"]] == [2]
    # the validation split scored again with the largest components (choosing post-processing without the test split)
    argv = [*args, "--device", "cpu", "--set", "roi_size=[32,32,32]", "--eval_only", "--eval_split", "val"]
    assert baseline.main([*argv, "--keep_largest", "--metrics_name", "val_largest.json"]) == 0
    scored = json.loads((out / "val_largest.json").read_text())
    assert scored["run"]["eval_split"] == "val" and scored["run"]["keep_largest"] is True
    assert len(scored["cases"]) == 1  # the validation case, not the two test cases
    assert json.loads((out / "metrics.json").read_text())["run"]["eval_split"] == "test"
    # or of one structure alone (a choice per structure); a structure the data set lacks is refused
    assert baseline.main([*argv, "--keep_largest", "posterior hippocampus", "--metrics_name", "val_one.json"]) == 0
    assert json.loads((out / "val_one.json").read_text())["run"]["keep_largest"] == ["posterior hippocampus"]
    with pytest.raises(ValueError, match="'liver', which this model does not segment"):
        baseline.main([*argv, "--keep_largest", "liver", "--metrics_name", "val_liver.json"])


def test_the_epoch_schedule_warms_up_then_anneals():
    baseline = load_script(ROOT / "scripts" / "experiments" / "train_baseline.py")
    factors = [baseline.learning_rate_factor(e, 5.0, 60.0) for e in (0.0, 2.5, 5.0, 32.5, 60.0)]
    assert factors[0] == pytest.approx(0.1) and factors[1] == pytest.approx(0.55) and factors[2] == pytest.approx(1.0)
    assert factors[3] == pytest.approx(0.5) and factors[4] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("budget", [[], ["--budget", "10", "--max_epochs", "2"]])
def test_exactly_one_training_budget_is_asked_for(tmp_path, budget):
    with pytest.raises(SystemExit):
        load_script(ROOT / "scripts" / "experiments" / "train_baseline.py").main(
            ["--dataset_dir", str(tmp_path), *budget]
        )


def test_too_few_training_cases_for_one_batch_is_an_error_naming_the_folder(tmp_path):
    data = write_msd(tmp_path / "tiny", num_cases=4)  # 2 training cases, batches of 4
    with pytest.raises(SystemExit, match="make no whole batch of 4"):
        load_script(ROOT / "scripts" / "experiments" / "train_baseline.py").main(
            ["--dataset_dir", str(data), "--output_dir", str(tmp_path / "out"), "--max_epochs", "1", "--device", "cpu"]
        )


def test_thick_slices_train_and_infer_in_the_windows_segone_plans(tmp_path, planned_windows):
    """``--set thick_slice_ratio=3``: the U-Net's crops and sliding windows are SegOne's planned ones."""
    baseline = load_script(ROOT / "scripts" / "experiments" / "train_baseline.py")
    data = write_msd(tmp_path / "thick", num_cases=10, spacing=(1.0, 1.2, 4.0), shape=(32, 40, 10))
    out = tmp_path / "out"
    args = ["--dataset_dir", str(data), "--output_dir", str(out), "--max_epochs", "1", "--val_every", "1"]
    sets = ["--set", "roi_size=[32,32,32]", "--set", "thick_slice_ratio=3.0", "--set", "max_anisotropy=8.0"]
    assert baseline.main([*args, *sets]) == 0
    # at most 32^3 voxels: 16 slices (the U-Net's multiple), then the largest multiple of 16 that fits in-plane
    assert planned_windows == {(32, 32, 16)}
    run = json.loads((out / "metrics.json").read_text())["run"]
    assert run["steps"] == 1 and run["train_overrides"]["thick_slice_ratio"] == 3.0


def test_coordinate_channels_reach_the_baseline_s_crops_and_network_past_intensity_augmentation(tmp_path):
    """``--set coordinate_channels=true``: the U-Net takes four channels (the image and its voxels' positions) in
    training and evaluation, and intensity augmentation leaves the positions exact."""
    baseline = load_script(ROOT / "scripts" / "experiments" / "train_baseline.py")
    data = write_msd(tmp_path / "data", num_cases=6)
    overrides = {"dataset_dir": str(data), "coordinate_channels": True, "augment_intensity": True}
    train_tf, eval_tf, _ = baseline.transforms_from_train_config({**overrides, "roi_size": [32, 48, 32]})
    item = {"image": str(data / "imagesTr" / "case_0.nii.gz"), "label": str(data / "labelsTr" / "case_0.nii.gz")}
    ramps = [torch.linspace(-0.5, 0.5, n) for n in (32, 40, 32)]  # the case's own size
    for _ in range(4):  # the random intensity transforms fire with probability 0.15-0.5
        image = train_tf(dict(item))["image"]
        assert image.shape == (4, 32, 48, 32)
        for axis in range(3):
            values = torch.unique(image[1 + axis])
            # each value is the case's ramp or the padding's zero, never scaled, shifted or noised
            gaps = (values[:, None] - torch.cat([ramps[axis], torch.zeros(1)])[None]).abs().min(dim=1).values
            assert gaps.max() < 1e-6
    assert eval_tf(dict(item))["image"].shape == (4, 32, 40, 32)
    out = tmp_path / "out"
    args = ["--dataset_dir", str(data), "--output_dir", str(out), "--max_epochs", "1", "--val_every", "1"]
    assert baseline.main([*args, "--set", "roi_size=[32,32,32]", "--set", "coordinate_channels=true"]) == 0
    assert json.loads((out / "metrics.json").read_text())["run"]["train_overrides"]["coordinate_channels"] is True


def test_an_epoch_the_time_budget_ends_before_its_first_step_is_not_counted(tmp_path, monkeypatch):
    """The budget can run out while an epoch's first batch loads: that epoch trained nothing, so the run ends at the
    one before, validated, with its loss (not a NaN loss and one epoch too many). Nor may it run out unseen between
    an epoch's end and the next (the last epoch unvalidated, no model.pt). The script's clock advances a second per
    reading; budgets a second apart over the readings of an epoch make the runs end in each of those gaps."""
    import types

    baseline = load_script(ROOT / "scripts" / "experiments" / "train_baseline.py")
    data = write_msd(tmp_path / "data", num_cases=10)
    ticks = iter(range(10**6))
    monkeypatch.setattr(baseline, "time", types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    for budget in ("3.5", "4.5", "5.5"):
        out = tmp_path / f"out_{budget}"
        args = ["--dataset_dir", str(data), "--output_dir", str(out), "--budget", budget, "--val_every", "50"]
        assert baseline.main([*args, "--device", "cpu", "--set", "roi_size=[32,32,32]"]) == 0
        run = json.loads((out / "metrics.json").read_text())["run"]
        # 7 training cases, batches of 4, the last dropped: one step an epoch
        assert run["epochs"] == run["steps"] >= 1, (budget, run["epochs"], run["steps"])
        assert run["history"][-1]["epoch"] == run["epochs"] and run["best_epoch"] == run["epochs"]
        assert all(h["loss"] is not None for h in run["history"]), run["history"]
