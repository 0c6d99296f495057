"""The GPU runs script, dry-run on a CPU: calibration, one SegOne run and one baseline, scored and packed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import pytest

from tests.helpers.bundle_runs import ROOT, write_msd

pytestmark = pytest.mark.slow


def test_a_dry_run_trains_scores_and_packs_each_run(tmp_path):
    data = write_msd(tmp_path / "data", num_cases=10)
    out = tmp_path / "out"
    env = {
        **os.environ,
        "OUT": str(out),
        "DATA": str(data),
        "WORK_DIR": str(tmp_path / "runs"),
        "PY": sys.executable,
        "SMOKE": "1",
        "RUNS_SEGONE": "s0",
        "RUNS_BASELINE": "unet",
        "NUM_WORKERS": "0",
        "TOTAL": "1200",
    }
    script = ROOT / "scripts" / "experiments" / "gpu_recipe_runs.sh"
    result = subprocess.run(["bash", str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    summary = (out / "summary.txt").read_text()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "cal s0: rc 0" in summary and "cal unet: rc 0" in summary
    assert "SegOne epochs: 2" in summary and "s0 test: {'dice'" in summary and "unet: epochs 2" in summary
    with tarfile.open(out / "s0.tar") as tar:
        names = set(tar.getnames())
        assert {"s0.log", "s0/model.pt", "s0/eval_test/metrics.json"} <= names
        metrics = json.load(tar.extractfile("s0/eval_test/metrics.json"))
    assert len(metrics["cases"]) == 2  # the test fifth of 10 cases
    with tarfile.open(out / "unet.tar") as tar:
        assert json.load(tar.extractfile("unet/metrics.json"))["run"]["epochs"] == 2
    assert (out / "logs.tgz").is_file()


def test_it_refuses_to_start_without_data_or_output(tmp_path):
    script = ROOT / "scripts" / "experiments" / "gpu_recipe_runs.sh"
    env = {k: v for k, v in os.environ.items() if k not in ("DATA", "OUT")}
    result = subprocess.run(["bash", str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DATA: the MSD hippocampus folder" in result.stderr


def test_it_refuses_a_work_folder_that_holds_files_and_leaves_them(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("mine")
    env = {**os.environ, "DATA": str(tmp_path), "OUT": str(tmp_path / "out"), "WORK_DIR": str(work)}
    script = ROOT / "scripts" / "experiments" / "gpu_recipe_runs.sh"
    result = subprocess.run(["bash", str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "is not empty" in result.stderr
    assert (work / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("names", [{"RUNS_SEGONE": "s9"}, {"RUNS_BASELINE": "segresnet"}])
def test_it_refuses_a_run_name_it_does_not_know(tmp_path, names):
    env = {
        **os.environ,
        "DATA": str(tmp_path),
        "OUT": str(tmp_path / "out"),
        "WORK_DIR": str(tmp_path / "w"),
        "SMOKE": "1",
    }
    env.update(names)
    script = ROOT / "scripts" / "experiments" / "gpu_recipe_runs.sh"
    result = subprocess.run(["bash", str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "unknown" in result.stderr and next(iter(names.values())) in result.stderr
