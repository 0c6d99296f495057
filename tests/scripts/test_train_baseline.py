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
