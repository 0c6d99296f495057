#!/usr/bin/env python
"""Cost of SegOne against MONAI's BasicUNet, UNet and SegResNet: parameters, FLOPs, peak memory, CPU latency.

Every (network, input, threads) case runs in a fresh subprocess, so peak memory (resident set size above the
process's level just before the first forward pass) belongs to that case alone. Latency is the median of
repeated forward passes in eval mode under ``torch.no_grad()``, batch 1, after warm-up runs.

    python scripts/benchmarks/benchmark_network.py             # all cases, markdown table on stdout
    python scripts/benchmarks/benchmark_network.py --quick     # fewer repetitions
    python scripts/benchmarks/benchmark_network.py --output_file docs/benchmarks_table.md
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

SIZES: dict[str, tuple[int, ...]] = {
    "2D 1x256x256": (256, 256),
    "3D 1x48x64x48": (48, 64, 48),
    "3D 1x96x96x96": (96, 96, 96),
}
NETWORKS = ["SegOne", "SegOne (BatchNorm)", "MONAI BasicUNet", "MONAI UNet", "MONAI SegResNet"]


def build(name: str, spatial_dims: int):
    from monai.networks.nets import BasicUNet, SegResNet, UNet

    from bundle.networks import SegOne

    if name == "SegOne":
        return SegOne(spatial_dims=spatial_dims, in_channels=1, out_channels=3)
    if name == "SegOne (BatchNorm)":
        return SegOne(spatial_dims=spatial_dims, in_channels=1, out_channels=3, norm="batch")
    if name == "MONAI BasicUNet":
        return BasicUNet(spatial_dims=spatial_dims, in_channels=1, out_channels=3)
    if name == "MONAI UNet":
        return UNet(spatial_dims, 1, 3, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2)
    if name == "MONAI SegResNet":
        return SegResNet(spatial_dims=spatial_dims, in_channels=1, out_channels=3, init_filters=16)
    raise ValueError(f"unknown network {name!r}; choose from {NETWORKS}")


def _rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_case(name: str, size: tuple[int, ...], threads: int, repeats: int, budget_s: float) -> dict[str, float]:
    """Measure one case in this process (called in a fresh subprocess)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = build(name, len(size)).eval()
    x = torch.rand(1, 1, *size)
    params = sum(p.numel() for p in net.parameters())
    base = _rss_mib()
    with torch.no_grad():
        t0 = time.perf_counter()
        net(x)
        first = time.perf_counter() - t0
        peak = _peak_rss_mib() - base
        for _ in range(2 if first < 1.0 else 1):
            net(x)
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < repeats and (len(times) < 3 or time.perf_counter() - start < budget_s):
            t0 = time.perf_counter()
            net(x)
            times.append(time.perf_counter() - t0)
        with FlopCounterMode(display=False) as counter:
            net(x)
    return {
        "params_m": params / 1e6,
        "gflops": counter.get_total_flops() / 1e9,
        "peak_mib": peak,
        "median_ms": statistics.median(times) * 1000,
        "runs": len(times),
    }


def _child(args: argparse.Namespace) -> None:
    result = run_case(args.case_network, tuple(args.case_size), args.case_threads, args.repeats, args.budget)
    print("RESULT " + json.dumps(result))


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", nargs="+", default=NETWORKS)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), help=f"any of {list(SIZES)}")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=10, help="forward passes timed per case (at least 3)")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds per case after which timing stops")
    parser.add_argument("--quick", action="store_true", help="3 repetitions, 5 s budget")
    parser.add_argument("--output_file", type=Path, help="also write the markdown table to this file")
    parser.add_argument("--case_network", help=argparse.SUPPRESS)
    parser.add_argument("--case_size", type=int, nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--case_threads", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.budget = 3, 5.0
    if args.case_network:
        _child(args)
        return 0

    unknown = [s for s in args.sizes if s not in SIZES]
    if unknown:
        parser.error(f"unknown sizes {unknown}; choose from {list(SIZES)}")
    header = (
        "| input | network | params (M) | GFLOPs | peak memory (MiB) | "
        + " | ".join(f"median latency, {t} thread{'s' if t > 1 else ''} (ms)" for t in args.threads)
        + " |"
    )
    lines = [f"Machine: {machine()}", "", header, "|" + "---|" * (5 + len(args.threads))]
    print("\n".join(lines), flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(max(args.threads)))
    for size_name in args.sizes:
        for name in args.networks:
            row: dict[str, float] = {}
            latencies = []
            for threads in args.threads:
                cmd = [sys.executable, __file__, "--case_network", name, "--case_threads", str(threads)]
                cmd += ["--case_size", *map(str, SIZES[size_name]), "--repeats", str(args.repeats)]
                cmd += ["--budget", str(args.budget)]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                results = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                if proc.returncode != 0 or not results:
                    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
                    print(f"| {size_name} | {name} | failed: {tail[0]} |", flush=True)
                    break
                res = json.loads(results[0][len("RESULT ") :])
                row = row or res
                row["peak_mib"] = max(row["peak_mib"], res["peak_mib"])
                latencies.append(f"{res['median_ms']:.0f}")
            else:
                line = (
                    f"| {size_name} | {name} | {row['params_m']:.2f} | {row['gflops']:.1f} | {row['peak_mib']:.0f} | "
                    + " | ".join(latencies)
                    + " |"
                )
                lines.append(line)
                print(line, flush=True)
    if args.output_file:
        args.output_file.parent.mkdir(parents=True, exist_ok=True)
        args.output_file.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    mp.set_start_method("spawn", force=True)
    sys.exit(main())
