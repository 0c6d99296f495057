"""scripts/benchmarks/benchmark_edge.py: latency idle and under contention, SegOne against UNet, in one table."""

from __future__ import annotations

import re

import pytest

from bundle.utils.config import BUNDLE_ROOT
from tests.helpers.scripts import load_script

SCRIPT = BUNDLE_ROOT / "scripts" / "benchmarks" / "benchmark_edge.py"


def _module():
    return load_script(SCRIPT)


@pytest.mark.slow
def test_benchmark_edge_prints_every_cell(tmp_path, capsys):
    out = tmp_path / "table.md"
    argv = ["--repeats", "2", "--threads", "1", "2", "--competitors", "1", "--shape", "32", "32", "32"]
    argv += ["--models", "SegOne eager", "UNet eager", "--policies", "stock", "bundle", "--settle", "0.05"]
    assert _module().main(argv + ["--output_file", str(out)]) == 0
    text = out.read_text()
    assert text.strip() in capsys.readouterr().out
    header = "| model | policy | 1 thread, idle | 1 thread, 1 competing | 2 threads, idle | 2 threads, 1 competing |"
    assert header in text
    rows = [line for line in text.splitlines() if line.startswith("| SegOne") or line.startswith("| UNet")]
    assert [r.split(" | ")[:2] for r in rows] == [
        ["| SegOne eager", "stock"],
        ["| SegOne eager", "bundle"],
        ["| UNet eager", "stock"],
        ["| UNet eager", "bundle"],
    ]
    for row in rows:
        cells = row.strip("| ").split(" | ")[2:]
        assert len(cells) == 4 and all(re.match(r"\d+ \[\d+-\d+\]", c) for c in cells), row
    for row in rows[:2]:  # SegOne cells carry the ratio to the UNet
        assert row.count(" x") == 4


def test_percentile_and_argument_checks():
    module = _module()
    assert module._percentile([1.0, 2.0, 3.0, 4.0, 5.0], 0.5) == 3.0
    assert module._percentile([1.0, 2.0, 3.0, 4.0, 5.0], 0.1) == pytest.approx(1.4)
    assert module._percentile([7.0], 0.9) == 7.0
    with pytest.raises(SystemExit):
        module.main(["--repeats", "0"])
    with pytest.raises(SystemExit):
        module.main(["--onnx_dir", "/nonexistent/folder", "--models", "SegOne ORT fp32"])


@pytest.mark.slow
def test_the_prompt_parallel_policy_times_the_shipped_export(tmp_path, capsys):
    argv = ["--repeats", "1", "--threads", "2", "--competitors", "1", "--shape", "32", "32", "32", "--settle", "0.05"]
    argv += ["--models", "SegOne ORT fp32", "UNet ORT", "--policies", "prompts"]
    assert _module().main(argv + ["--onnx_dir", str(BUNDLE_ROOT / "models" / "edge")]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| SegOne ORT fp32 | prompts")]
    assert len(rows) == 1 and rows[0].count(" x") == 2  # idle and contended, each with its ratio to the UNet
