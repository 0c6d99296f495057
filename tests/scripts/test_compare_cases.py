"""scripts/experiments/compare_cases.py: paired per-case comparison of two metrics.json files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bundle.evaluation import summarize
from bundle.utils.config import BUNDLE_ROOT
from tests.helpers.scripts import load_script

SCRIPT = BUNDLE_ROOT / "scripts" / "experiments" / "compare_cases.py"
CLASSES = ["a", "b"]


def _module():
    return load_script(SCRIPT)


def _write(path, dice_by_case):
    cases = [
        {
            "image": f"case_{i}.nii.gz",
            **{
                c: {"dice": d, "iou": d, "hd95": 1.0 - d, "surface_dice": d, "precision": d, "recall": d}
                for c in CLASSES
            },
        }
        for i, d in dice_by_case.items()
    ]
    path.write_text(json.dumps(summarize(cases, CLASSES)))
    return path


def test_paired_difference_interval_and_wins(tmp_path):
    rng = np.random.default_rng(0)
    base = {i: float(v) for i, v in enumerate(rng.uniform(0.8, 0.9, 40))}
    better = {i: v + 0.01 + float(rng.normal(0, 0.002)) for i, v in base.items()}
    better[99] = 0.5  # a case only one file holds: left out
    stats = _module().compare(_write(tmp_path / "a.json", better), _write(tmp_path / "b.json", base), ["dice"])
    s = stats["dice"]
    assert s["n"] == 40 and s["wins"] == 40 and s["losses"] == 0
    assert s["ci_low"] < s["diff"] < s["ci_high"] and 0.009 < s["diff"] < 0.011 and s["ci_low"] > 0
    assert s["p_wilcoxon"] < 1e-6
    same = _module().compare(tmp_path / "b.json", tmp_path / "b.json", ["dice"])["dice"]
    assert same["diff"] == 0 and same["ties"] == 40 and same["p_wilcoxon"] == 1.0


def test_cli_prints_the_table_and_names_bad_files(tmp_path, capsys):
    a = _write(tmp_path / "a.json", {0: 0.8, 1: 0.9, 2: 0.85})
    b = _write(tmp_path / "b.json", {0: 0.7, 1: 0.8, 2: 0.9})
    assert _module().main([str(a), str(b), "--names", "SegOne", "UNet", "--metrics", "dice", "hd95"]) == 0
    out = capsys.readouterr().out
    assert "| dice | 3 | 0.8500 | 0.8000 | +0.0500" in out and "| 2 / 0 / 1 |" in out
    assert "| hd95 | 3 |" in out
    (tmp_path / "bad.json").write_text("{}")
    assert _module().main([str(a), str(tmp_path / "bad.json")]) == 2
    assert "bad.json: not a metrics.json" in capsys.readouterr().err
    with pytest.raises(ValueError, match="share no case"):
        _module().compare(a, _write(tmp_path / "c.json", {7: 0.5}), ["dice"])


def test_cases_match_by_file_name_and_names_must_be_unique(tmp_path):
    module = _module()
    a = _write(tmp_path / "a.json", {0: 0.8, 1: 0.9})
    data = json.loads(a.read_text())
    for case in data["cases"]:  # an older evaluation recorded the label's path, the baseline the image's
        case["image"] = "/data/labelsTr/" + case["image"]
    (tmp_path / "labels.json").write_text(json.dumps(data))
    assert set(module.load_cases(tmp_path / "labels.json")) == {"case_0.nii.gz", "case_1.nii.gz"}
    stats = module.compare(tmp_path / "labels.json", _write(tmp_path / "b.json", {0: 0.7, 1: 0.8}), ["dice"])
    assert stats["dice"]["n"] == 2
    data["cases"][1]["image"] = "/other/imagesTr/case_0.nii.gz"
    (tmp_path / "twice.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"twice.json: cases share file names \['case_0.nii.gz'\]"):
        module.load_cases(tmp_path / "twice.json")
