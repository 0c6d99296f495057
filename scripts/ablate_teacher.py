#!/usr/bin/env python
"""With and without the SAM2 teacher: two training runs of train.json, same seed and epochs, scored the same way.

Each run is the bundle's own training command (the second with ``--teacher#checkpoint``), then evaluate.json on
``--eval_split`` (default: the validation split). A markdown table gives each run's best validation Dice, its
evaluation mean Dice and its wall time (the teacher's cache filling included).

The comparison means something only with real SAM2 weights (e.g. sam2.1_hiera_tiny.pt from
https://github.com/facebookresearch/sam2). With a randomly initialised SAM2 it only shows that the plumbing runs:
do not read those numbers as results.

    python scripts/ablate_teacher.py --dataset_dir /path/to/Task04_Hippocampus \\
        --checkpoint /path/to/sam2.1_hiera_tiny.pt --max_epochs 60 --output_dir runs/ablate_teacher
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bundle(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=ROOT, env=env, check=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset_dir", default="", help="MSD folder (default: the demo data)")
    ap.add_argument("--checkpoint", required=True, help="SAM2 checkpoint file")
    ap.add_argument("--image_size", type=int, default=512)
    ap.add_argument("--weight", type=float, default=0.1, help="consistency weight (lambda)")
    ap.add_argument("--max_epochs", type=int, default=60)
    ap.add_argument("--eval_split", default="val", choices=["train", "val", "test", "all"])
    ap.add_argument("--output_dir", default=str(ROOT / "runs" / "ablate_teacher"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="further train.json override for both runs (VALUE as on the bundle command line)")
    args = ap.parse_args(argv)

    out = Path(args.output_dir).resolve()
    common = ["--dataset_dir", args.dataset_dir, "--max_epochs", str(args.max_epochs), "--resume", "False"]
    for item in args.set:
        key, _, value = item.partition("=")
        common += [f"--{key}", value]
    runs = {
        "without teacher": [],
        "with SAM2 teacher": ["--teacher#checkpoint", str(Path(args.checkpoint).resolve()),
                              "--teacher#image_size", str(args.image_size), "--teacher#weight", str(args.weight)],
    }
    rows = []
    for name, extra in runs.items():
        run_dir = out / name.replace(" ", "_")
        start = time.perf_counter()
        _bundle("run", "training", "--config_file", "configs/train.json", "--output_dir", str(run_dir), *common, *extra)
        seconds = time.perf_counter() - start
        _bundle("run", "evaluating", "--config_file", "configs/evaluate.json", "--dataset_dir", args.dataset_dir,
                "--eval_split", args.eval_split, "--ckpt_path", str(run_dir / "model.pt"),
                "--output_dir", str(run_dir / "evaluation"))
        import torch

        meta = torch.load(run_dir / "model.pt", weights_only=True)["metadata"]
        metrics = json.loads((run_dir / "evaluation" / "metrics.json").read_text())
        rows.append((name, meta.get("metric"), meta.get("epoch"), metrics["mean"]["dice"], seconds))

    print(f"\n{args.max_epochs} epochs each, same seed; evaluation on the {args.eval_split} split\n")
    print("| run | best validation Dice (epoch) | evaluation mean Dice | wall time |")
    print("|---|---:|---:|---:|")
    for name, best, epoch, dice, seconds in rows:
        print(f"| {name} | {best:.3f} ({epoch}) | {dice:.3f} | {seconds / 60:.1f} min |")
    print("\nWith a randomly initialised SAM2 checkpoint this shows only that the plumbing runs; it is not a result.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
