#!/usr/bin/env python
"""Accuracy against time for the number of DDIM steps (and samples): the table behind the default steps.

Runs ``configs/evaluate.json`` (the bundle's own evaluation: same preprocessing, sliding windows, metrics) on a
split of an MSD folder for each setting, and prints a markdown table of mean and per-class Dice, HD95 and the
median whole-volume inference time (sliding window, all classes) on this machine.

    python scripts/ddim_steps.py --dataset_dir ../shared/data/hippocampus --eval_split test --steps 1 2 3 5 10
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def evaluate(dataset_dir: str, split: str, ckpt: str, steps: int, samples: int, out: Path) -> dict:
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow
    from monai.engines.utils import IterationEvents

    wf = ConfigWorkflow(
        config_file=str(ROOT / "configs" / "evaluate.json"), meta_file=str(ROOT / "configs" / "metadata.json"),
        logging_file=False, workflow_type="infer", bundle_root=str(ROOT), dataset_dir=dataset_dir, eval_split=split,
        ckpt_path=ckpt, num_inference_steps=steps, num_samples=samples, output_dir=str(out), save_predictions=False,
    )
    wf.initialize()
    evaluator = wf.parser.get_parsed_content("evaluator")
    times, started = [], {}
    evaluator.add_event_handler(Events.ITERATION_STARTED, lambda e: started.update(t=time.perf_counter()))
    evaluator.add_event_handler(IterationEvents.FORWARD_COMPLETED, lambda e: times.append(time.perf_counter() - started["t"]))
    wf.run()
    metrics = json.loads((out / "metrics.json").read_text())
    return {"metrics": metrics, "seconds": float(np.median(times)), "cases": len(metrics["cases"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset_dir", required=True)
    ap.add_argument("--eval_split", default="test")
    ap.add_argument("--ckpt", default=str(ROOT / "models" / "model.pt"))
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2, 3, 5, 10])
    ap.add_argument("--samples", type=int, nargs="+", default=[1], help="ensemble sizes, each with every step count")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    rows = []
    for samples in args.samples:
        for steps in args.steps:
            with tempfile.TemporaryDirectory() as tmp:
                r = evaluate(args.dataset_dir, args.eval_split, args.ckpt, steps, samples, Path(tmp))
            m = r["metrics"]
            rows.append({"steps": steps, "samples": samples, "cases": r["cases"], "seconds": r["seconds"],
                         "mean": m["mean"], "classes": m["classes"]})
            print(f"steps {steps} samples {samples}: mean Dice {m['mean']['dice']:.4f}, "
                  f"{r['seconds'] * 1000:.0f} ms/volume", flush=True)
    names = list(rows[0]["classes"])
    print(f"\n{rows[0]['cases']} cases ({args.eval_split} split), {torch.get_num_threads()} threads\n")
    print("| DDIM steps | samples | mean Dice | " + " | ".join(f"Dice {n}" for n in names)
          + " | mean HD95 (mm) | time / volume |")
    print("|---:|---:|---:|" + "---:|" * len(names) + "---:|---:|")
    for r in rows:
        per_class = " | ".join(f"{r['classes'][n]['dice']:.3f}" for n in names)
        print(f"| {r['steps']} | {r['samples']} | {r['mean']['dice']:.3f} | {per_class} | {r['mean']['hd95']:.2f} | "
              f"{r['seconds'] * 1000:.0f} ms |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
