"""The GPU checks script, dry-run on a CPU: multi-process training (gloo), evaluation, inference and the benchmark,
each logged and packed; a failing step is reported and the others still run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import pytest

from bundle.utils.config import load_bundle_config
from tests.helpers.bundle_runs import ROOT, write_msd

pytestmark = pytest.mark.slow

SCRIPT = ROOT / "scripts" / "experiments" / "gpu_checks.sh"


def _env(tmp_path, data):
    return {
        **os.environ,
        "OUT": str(tmp_path / "out"),
        "DATA": str(data),
        "WORK_DIR": str(tmp_path / "work"),
        "PY": sys.executable,
        "SMOKE": "1",
        "NUM_WORKERS": "0",
        "OMP_NUM_THREADS": "1",
    }


def test_a_dry_run_checks_every_path_and_packs_the_results(tmp_path):
    data = write_msd(tmp_path / "data", num_cases=10)
    env = _env(tmp_path, data)
    result = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    out = tmp_path / "out"
    summary = (out / "summary.txt").read_text()
    assert result.returncode == 0, summary + result.stdout[-3000:] + result.stderr[-3000:]
    for step in ("ddp", "eval", "infer", "bench"):
        assert f"{step}: rc 0" in summary, summary
    assert "ddp: backend gloo, Epoch[1] Metrics -- val_mean_dice:" in summary
    assert "infer: 5 label maps" in summary
    with tarfile.open(out / "ddp.tar") as tar:
        assert {"ddp.log", "ddp/model.pt", "ddp/model.prompts.pt"} <= set(tar.getnames())
        tar.extractall(tmp_path / "unpacked", filter="data")
    # the model trained under torchrun loads into the inference network, on the CPU
    parser = load_bundle_config("inference.json", overrides={"ckpt_path": str(tmp_path / "unpacked/ddp/model.pt")})
    assert parser.get_parsed_content("network") is not None
    with tarfile.open(out / "eval.tar") as tar:
        metrics = json.load(tar.extractfile("eval/metrics.json"))
    assert len(metrics["cases"]) == 2  # the test fifth of 10 cases
    bench = (out / "bench.txt").read_text()
    assert "device cpu" in bench and "| MONAI UNet (baseline) |" in bench


def test_a_failing_step_is_reported_and_the_others_run(tmp_path):
    empty = tmp_path / "nothing"
    empty.mkdir()
    result = subprocess.run(
        ["bash", str(SCRIPT)], cwd=ROOT, env=_env(tmp_path, empty), capture_output=True, text=True, timeout=600
    )
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert result.returncode == 1, summary
    assert "ddp: rc 1" in summary and "bench: rc 0" in summary and "end" in summary


def test_it_stops_when_its_python_cannot_import_torch_and_monai(tmp_path):
    env = {**_env(tmp_path, tmp_path), "PY": "false"}
    result = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "false cannot import torch and monai" in result.stderr
    assert "ddp:" not in (tmp_path / "out" / "summary.txt").read_text()


def test_it_refuses_to_start_without_data_or_output(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATA", "OUT")}
    result = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DATA: the MSD hippocampus folder" in result.stderr
