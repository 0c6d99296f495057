#!/usr/bin/env python
"""MONAI Label /infer/segone latency at 1 and 4 concurrent clients, and the server's peak memory.

Starts the SegOne MONAI Label app on a free loopback port over a temporary studies folder (MSD hippocampus
images from --image_dir, or synthetic phantoms), sends --requests infer requests per concurrency level, and prints
a table of p50/p95 latency and the peak resident memory of the server process tree (sampled every 50 ms).

    python scripts/benchmarks/benchmark_monailabel.py --image_dir ../shared/data/hippocampus/imagesTr --requests 40
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def _percentile(values: Sequence[float], q: float) -> float:
    values = sorted(values)
    k = (len(values) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


class PeakMemory(threading.Thread):
    """Samples the resident memory of a process and its children."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        import psutil

        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.running = True

    def run(self) -> None:
        import psutil

        while self.running:
            try:
                procs = [self.process] + self.process.children(recursive=True)
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(self.interval)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--image_dir", default=None, help="folder of NIfTI images to serve (default: --count synthetic phantoms)"
    )
    ap.add_argument("--count", type=int, default=8, help="images to serve")
    ap.add_argument("--requests", type=int, default=40, help="requests per concurrency level")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4], help="concurrency levels")
    args = ap.parse_args(argv)

    import nibabel as nib
    import numpy as np
    import requests

    from bundle.apps.monailabel.launch import start_server, stop_server

    work = Path(tempfile.mkdtemp(prefix="segone-ml-bench-"))
    studies = work / "studies"
    studies.mkdir()
    if args.image_dir:
        for path in sorted(Path(args.image_dir).glob("*.nii.gz"))[: args.count]:
            shutil.copy(path, studies / path.name)
    else:
        from bundle.data.demo import make_phantom

        for i in range(args.count):
            image, _ = make_phantom(i, shape=(36, 50, 36))
            nib.save(nib.Nifti1Image(image, np.eye(4)), str(studies / f"phantom_{i}.nii.gz"))
    images = sorted(p.name[: -len(".nii.gz")] for p in studies.glob("*.nii.gz"))
    proc, url = start_server(str(studies), work / "models", work / "server.log", "--conf", "skip_trainers", "true")
    memory = PeakMemory(proc.pid)
    memory.start()
    rows = []
    try:

        def infer(i: int) -> float:
            start = time.perf_counter()
            r = requests.post(
                f"{url}/infer/segone",
                params={"image": images[i % len(images)], "output": "image"},
                files={"params": (None, json.dumps({}))},
                timeout=600,
            )
            r.raise_for_status()
            return time.perf_counter() - start

        for i in range(len(images)):  # warm-up: model load, first-call costs
            infer(i)
        for clients in args.clients:
            with ThreadPoolExecutor(clients) as pool:
                start = time.perf_counter()
                latencies = list(pool.map(infer, range(args.requests)))
                wall = time.perf_counter() - start
            rows.append((clients, statistics.median(latencies), _percentile(latencies, 95), args.requests / wall))
    finally:
        memory.running = False
        stop_server(proc)
        shutil.rmtree(work, ignore_errors=True)
    shape = (
        "x".join(map(str, nib.load(str(sorted(Path(args.image_dir).glob("*.nii.gz"))[0])).shape))
        if args.image_dir
        else "36x50x36"
    )
    print(
        f"\nMONAI Label /infer/segone, {len(images)} images (~{shape}), {args.requests} requests per level, "
        f"output=image\n"
    )
    print("| concurrent clients | p50 latency | p95 latency | throughput |")
    print("|---:|---:|---:|---:|")
    for clients, p50, p95, rate in rows:
        print(f"| {clients} | {p50 * 1000:.0f} ms | {p95 * 1000:.0f} ms | {rate:.1f} requests/s |")
    print(f"\nserver peak resident memory (process tree): {memory.peak / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
