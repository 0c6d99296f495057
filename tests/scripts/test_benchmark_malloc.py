"""scripts/benchmarks/benchmark_malloc.py: training steps with stock malloc against keep_freed_memory, in
worker processes that take turns."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bundle.utils.config import BUNDLE_ROOT

SCRIPT = BUNDLE_ROOT / "scripts" / "benchmarks" / "benchmark_malloc.py"


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings: Linux only")
def test_table_has_both_settings_of_every_case_with_ratios_to_stock():
    # run as a user runs it: its spawned workers import the script as __main__'s module
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--threads", "1", "--repeats", "1"], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split(" | ") for line in out.stdout.splitlines() if line.startswith("| 1 |")]
    assert [(r[1], r[2]) for r in rows] == [
        (case, setting)
        for case in (
            "SegOne training",
            "UNet training",
            "SegOne inference, 4 windows x 3 prompts",
            "SegOne inference, 1 window x 12 prompts",
        )
        for setting in ("stock", "kept")
    ]
    assert all(r[-1] == "x1.00 |" for r in rows if r[2] == "stock")
    assert all(float(r[3].split()[0]) > 0 and float(r[4].split()[0]) > 0 for r in rows)
