"""keep_freed_memory: large blocks come from the reusable heap instead of fresh mmap pages, and every workflow sets
it before its engine runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bundle.utils.config import BUNDLE_ROOT
from bundle.utils.memory import MALLOC_ENV

# where a fresh 64 MiB allocation lands: inside the [heap] mapping (brk) or in a mapping of its own (mmap)
# (the module is loaded from its file: importing the bundle package would load torch and MONAI, about 15 s)
PROBE = """
import importlib.util, json, sys
import numpy as np
spec = importlib.util.spec_from_file_location("memory", sys.argv[1])
memory = importlib.util.module_from_spec(spec)
spec.loader.exec_module(memory)
keep_freed_memory = memory.keep_freed_memory
applied = keep_freed_memory()
again = keep_freed_memory()
block = np.ones(64 << 20, dtype=np.uint8)
address = block.ctypes.data
heap = []
for line in open("/proc/self/maps"):
    if line.rstrip().endswith("[heap]"):
        start, end = (int(v, 16) for v in line.split()[0].split("-"))
        heap.append((start, end))
print(json.dumps({"applied": applied, "again": again, "in_heap": any(s <= address < e for s, e in heap)}))
"""


def probe(**env: str) -> dict:
    # glibc's own MALLOC_*_ tunables would change where a block lands: the probe runs without them
    environ = {
        k: v for k, v in os.environ.items() if k != MALLOC_ENV and not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))
    }
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(BUNDLE_ROOT / "bundle" / "utils" / "memory.py")],
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc and /proc/self/maps: Linux only")
def test_large_blocks_come_from_the_heap_only_when_applied():
    tuned = probe()
    assert tuned == {"applied": True, "again": True, "in_heap": True}
    stock = probe(**{MALLOC_ENV: "stock"})
    assert stock == {"applied": False, "again": False, "in_heap": False}
    assert probe(**{MALLOC_ENV: "kept"}) == tuned


def test_a_misspelt_setting_is_refused(monkeypatch):
    from bundle.utils.memory import keep_freed_memory

    monkeypatch.setenv(MALLOC_ENV, "stok")
    with pytest.raises(ValueError, match="SEGONE_MALLOC='stok': expected 'stock'"):
        keep_freed_memory()


@pytest.mark.parametrize(
    "config, workflows",
    [
        ("train.json", ["run", "training"]),
        ("multi_gpu_train.json", ["run", "training"]),
        ("evaluate.json", ["run", "evaluating"]),
        ("inference.json", ["run", "inference"]),
        ("dicom_batch.json", ["run"]),
    ],
)
def test_every_workflow_keeps_freed_memory_before_its_engine_runs(config, workflows):
    parsed = json.loads((BUNDLE_ROOT / "configs" / config).read_text())
    for name in workflows:
        steps = parsed[name]
        assert "$bundle.utils.keep_freed_memory()" in steps, f"{config} {name}"
        position = steps.index("$bundle.utils.keep_freed_memory()")
        assert all(".run(" not in step and "run_batch(" not in step for step in steps[:position]), f"{config} {name}"
