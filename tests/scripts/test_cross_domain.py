"""scripts/experiments/cross_domain.py: one model per data set and one on all, each scored on every data set."""

from __future__ import annotations

import json

import pytest

from tests.helpers.bundle_runs import ROOT, SMALL, TINY_CLIP, TINY_CLIP_DIM, write_msd
from tests.helpers.scripts import load_script

pytestmark = pytest.mark.slow


def _sets(flag, values):
    return [arg for k, v in values.items() for arg in (flag, f"{k}={json.dumps(v)}")]


def test_every_model_is_scored_on_every_data_set(tmp_path, tiny_clip_config, capsys):
    module = load_script(ROOT / "scripts" / "experiments" / "cross_domain.py")
    assert [len(s) for s in module.training_sets(["a", "b"])] == [1, 1, 2]
    site_a = write_msd(tmp_path / "site_a", num_cases=5)
    site_b = write_msd(tmp_path / "site_b", num_cases=5)
    shared = {**SMALL, "val_fraction": 0.2, "test_fraction": 0.2}
    train = {"text_encoder#model_name": TINY_CLIP, "text_encoder#model_config": tiny_clip_config, "max_epochs": 1}
    train.update({"val_interval": 1, "batch_size": 2, "diffusion#val_steps": 1})
    evaluate = {"text_dim": TINY_CLIP_DIM, "num_inference_steps": 1}
    argv = ["--datasets", str(site_a), str(site_b), "--output_dir", str(tmp_path / "out")]
    argv += _sets("--set", shared) + _sets("--train_set", train) + _sets("--eval_set", evaluate)
    assert module.main(argv) == 0
    out = capsys.readouterr().out
    assert "| site_a | " in out and "| site_b | " in out and "| site_a+site_b | " in out
    row = next(line for line in out.splitlines() if line.startswith("| site_b | "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "site_b" and not cells[1].endswith("*") and cells[2].endswith(" *")  # in-domain: site_b
    results = json.loads((tmp_path / "out" / "cross_domain.json").read_text())
    assert set(results) == {"site_a", "site_b", "site_a+site_b"}
    assert all(set(r) == {"site_a", "site_b"} for r in results.values())
    assert len(results["site_a"]["site_b"]["cases"]) == 1  # a fifth of 5 cases
    # a rerun trains nothing and evaluates nothing again
    stamp = (tmp_path / "out" / "train_site_a" / "eval_site_b" / "metrics.json").stat().st_mtime_ns
    assert module.main(argv) == 0
    assert (tmp_path / "out" / "train_site_a" / "eval_site_b" / "metrics.json").stat().st_mtime_ns == stamp
