#!/usr/bin/env python
"""Accuracy against time for the number of DDIM steps (and samples): the table behind the default steps.

Runs ``configs/evaluate.json`` (the bundle's own evaluation: same preprocessing, sliding windows, metrics) on a
split of an MSD folder for each setting, and prints a markdown table of mean and per-class Dice, HD95 and the
median whole-volume inference time (sliding window, all classes) on this machine.

    python scripts/experiments/ddim_steps.py --dataset_dir ../shared/data/hippocampus --eval_split test \\
        --steps 1 2 3 5 10
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bundle.utils.config import BUNDLE_ROOT, load_bundle_config


def evaluate(dataset_dir: str, split: str, ckpt_path: str, steps: int, samples: int, out: Path) -> dict[str, Any]:
    """One run of configs/evaluate.json (the bundle's evaluation workflow), timing each volume's inference.

    Args:
        dataset_dir: the MSD folder.
        split: the split scored.
        ckpt_path: the SegOne model file.
        steps: DDIM steps.
        samples: ensemble size.
        out: the evaluation's output folder (``metrics.json``).

    Returns:
        ``{"metrics": metrics.json, "seconds": median inference seconds per volume, "cases": count}``.
    """
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow
    from monai.engines.utils import IterationEvents

    configs = BUNDLE_ROOT / "configs"
    overrides = {
        "dataset_dir": dataset_dir,
        "eval_split": split,
        "ckpt_path": ckpt_path,
        "num_inference_steps": steps,
        "num_samples": samples,
        "output_dir": str(out),
        "save_predictions": False,
    }
    wf = ConfigWorkflow(
        config_file=str(configs / "evaluate.json"),
        meta_file=str(configs / "metadata.json"),
        logging_file=False,
        workflow_type="infer",
        **overrides,
    )
    # the same config, read so that its %configs/... macros resolve from any working folder
    wf.parser = load_bundle_config("evaluate.json", overrides=overrides)
    wf.initialize()
    evaluator = wf.parser.get_parsed_content("evaluator")
    times, started = [], {}
    evaluator.add_event_handler(Events.ITERATION_STARTED, lambda e: started.update(t=time.perf_counter()))
    evaluator.add_event_handler(
        IterationEvents.FORWARD_COMPLETED, lambda e: times.append(time.perf_counter() - started["t"])
    )
    wf.run()
    metrics = json.loads((out / "metrics.json").read_text())
    return {"metrics": metrics, "seconds": float(np.median(times)), "cases": len(metrics["cases"])}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset_dir", required=True, help="MSD folder")
    ap.add_argument("--eval_split", default="test", help="the split scored (default: %(default)s)")
    ap.add_argument(
        "--ckpt_path", default=str(BUNDLE_ROOT / "models" / "model.pt"), help="SegOne model file (default: %(default)s)"
    )
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2, 3, 5, 10], help="DDIM step counts")
    ap.add_argument("--samples", type=int, nargs="+", default=[1], help="ensemble sizes, each with every step count")
    ap.add_argument("--output_file", help="also write the results here (JSON)")
    args = ap.parse_args(argv)

    rows = []
    for samples in args.samples:
        for steps in args.steps:
            with tempfile.TemporaryDirectory() as tmp:
                r = evaluate(args.dataset_dir, args.eval_split, args.ckpt_path, steps, samples, Path(tmp))
            m = r["metrics"]
            rows.append(
                {
                    "steps": steps,
                    "samples": samples,
                    "cases": r["cases"],
                    "seconds": r["seconds"],
                    "mean": m["mean"],
                    "classes": m["classes"],
                }
            )
            print(
                f"steps {steps} samples {samples}: mean Dice {m['mean']['dice']:.4f}, "
                f"{r['seconds'] * 1000:.0f} ms/volume",
                flush=True,
            )
    names = list(rows[0]["classes"])
    print(f"\n{rows[0]['cases']} cases ({args.eval_split} split), {torch.get_num_threads()} threads\n")
    print(
        "| DDIM steps | samples | mean Dice | "
        + " | ".join(f"Dice {n}" for n in names)
        + " | mean HD95 (mm) | time / volume |"
    )
    print("|---:|---:|---:|" + "---:|" * len(names) + "---:|---:|")
    for r in rows:
        per_class = " | ".join(f"{r['classes'][n]['dice']:.3f}" for n in names)
        print(
            f"| {r['steps']} | {r['samples']} | {r['mean']['dice']:.3f} | {per_class} | {r['mean']['hd95']:.2f} | "
            f"{r['seconds'] * 1000:.0f} ms |"
        )
    if args.output_file:
        Path(args.output_file).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
