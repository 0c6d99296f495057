#!/usr/bin/env python
"""Whole-volume inference time on the CPU: SegOne (all class prompts, by DDIM steps) against U-Net baselines.

Every network runs through the same MONAI SlidingWindowInferer as ``configs/inference.json`` (ROI 48x64x48,
overlap 0.25, Gaussian blending) on a volume of the size of an MSD hippocampus crop; the median of ``--repeats``
runs is reported, with the number of threads. Timing does not depend on the weights: the U-Nets run untrained.

    python scripts/benchmarks/benchmark_inference.py --steps 1 2 3 5 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from bundle.utils.config import BUNDLE_ROOT, load_bundle_config


def segone(steps: int, ckpt_path: Path) -> torch.nn.Module:
    """SegOne as configs/inference.json builds it.

    Args:
        steps: DDIM steps per prompt.
        ckpt_path: the model file, loaded when it exists (else random weights: timing does not depend on them).

    Returns:
        The network in eval mode.
    """
    parser = load_bundle_config("inference.json", overrides={"num_inference_steps": steps, "ckpt_path": str(ckpt_path)})
    return parser.get_parsed_content("network" if ckpt_path.is_file() else "network_def").eval()


def median_seconds(net: torch.nn.Module, volume: torch.Tensor, repeats: int) -> float:
    """Whole-volume sliding-window inference time.

    Args:
        net: the network.
        volume: ``[1, 1, X, Y, Z]``.
        repeats: timed runs, after one warm-up run.

    Returns:
        The median seconds of the timed runs.
    """
    from monai.inferers import SlidingWindowInferer

    inferer = SlidingWindowInferer((48, 64, 48), sw_batch_size=1, overlap=0.25, mode="gaussian")
    with torch.no_grad():
        inferer(volume, net)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            inferer(volume, net)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: Sequence[str] | None = None) -> int:
    from monai.networks.nets import BasicUNet, UNet

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2, 3, 5], help="SegOne DDIM step counts to time")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--repeats", type=int, default=10, help="timed runs per network (the median is reported)")
    ap.add_argument("--shape", type=int, nargs=3, default=[36, 50, 36], help="volume size (a hippocampus crop)")
    ap.add_argument(
        "--ckpt_path",
        default=str(BUNDLE_ROOT / "models" / "model.pt"),
        help="SegOne model file (default: %(default)s; random weights when it is absent)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    volume = torch.randn(1, 1, *args.shape)
    rows = []
    for steps in args.steps:
        net = segone(steps, Path(args.ckpt_path))
        rows.append(
            (
                f"SegOne, {steps} DDIM step(s), 2 prompts",
                sum(p.numel() for p in net.parameters()),
                median_seconds(net, volume, args.repeats),
            )
        )
    for name, net in (
        ("MONAI UNet (baseline)", UNet(3, 1, 3, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2)),
        ("MONAI BasicUNet", BasicUNet(3, 1, 3)),
    ):
        rows.append((name, sum(p.numel() for p in net.parameters()), median_seconds(net.eval(), volume, args.repeats)))
    print(
        f"\nvolume {'x'.join(map(str, args.shape))}, ROI 48x64x48, {args.threads} threads, median of {args.repeats}\n"
    )
    print("| network | parameters | time / volume |")
    print("|---|---:|---:|")
    for name, params, seconds in rows:
        print(f"| {name} | {params / 1e6:.2f} M | {seconds * 1000:.0f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
