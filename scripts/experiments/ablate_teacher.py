#!/usr/bin/env python
"""With and without the SAM2 teacher: two training runs of train.json, same seed and epochs, scored the same way.

Each run is the bundle's own training workflow (``monai.bundle.run("training", ...)``, as the bundle command, in
this process; the second with ``teacher#checkpoint`` set to ``--sam2_checkpoint``), then evaluate.json on
``--eval_split`` (default: the
validation split). A markdown table gives each run's best validation Dice, its
evaluation mean Dice and its wall time (the teacher's cache filling included).

The comparison means something only with real SAM2 weights (e.g. sam2.1_hiera_tiny.pt from
https://github.com/facebookresearch/sam2). With a randomly initialised SAM2 it only shows that the plumbing runs:
do not read those numbers as results.

    python scripts/experiments/ablate_teacher.py --dataset_dir /path/to/Task04_Hippocampus \\
        --sam2_checkpoint /path/to/sam2.1_hiera_tiny.pt --max_epochs 60 --output_dir runs/ablate_teacher
    # the teacher on unlabelled cases, prompted by the released model's predictions
    python scripts/experiments/ablate_teacher.py --dataset_dir DIR --sam2_checkpoint SAM2.pt \\
        --teacher_set teacher_training#prompt_source=student \\
        --teacher_set teacher_training#student_checkpoint=models/model.pt \\
        --teacher_set teacher_training#unlabelled_dir=DIR/imagesTs
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bundle.utils.config import BUNDLE_ROOT, load_bundle_config


def _bundle(run_id: str, config: str, **overrides: Any) -> None:
    """``python -m monai.bundle run RUN_ID --config_file configs/CONFIG ...``, in this process (one start-up).

    The workflow is ``monai.bundle.run``'s (initialize, run, finalize), with the config read so that its
    ``%configs/...`` macros resolve from any working folder.
    """
    from monai.bundle import ConfigWorkflow

    configs = BUNDLE_ROOT / "configs"
    wf = ConfigWorkflow(
        config_file=str(configs / config),
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        run_id=run_id,
        **overrides,
    )
    wf.parser = load_bundle_config(config, overrides=overrides)
    wf.initialize()
    wf.run()
    wf.finalize()


def main(argv: Sequence[str] | None = None) -> int:
    from bundle.utils.cli import add_override_option

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset_dir", default="", help="MSD folder (default: the demo data)")
    ap.add_argument("--sam2_checkpoint", required=True, help="SAM2 checkpoint file (teacher#checkpoint)")
    ap.add_argument("--image_size", type=int, default=512, help="SAM2 image size (teacher#image_size)")
    ap.add_argument("--weight", type=float, default=0.1, help="consistency weight, lambda (teacher_training#weight)")
    ap.add_argument("--max_epochs", type=int, default=60, help="training epochs of each run")
    ap.add_argument(
        "--eval_split", default="val", choices=["train", "val", "test", "all"], help="the split the runs are scored on"
    )
    ap.add_argument(
        "--output_dir",
        default=str(BUNDLE_ROOT / "runs" / "ablate_teacher"),
        help="one folder per run in it (default: %(default)s)",
    )
    add_override_option(ap, "--set", "further train.json override for both runs")
    add_override_option(
        ap,
        "--teacher_set",
        "override for the teacher run only, e.g. teacher_training#loss=dice, "
        "teacher_training#prompt_source=student, teacher_training#student_checkpoint=models/model.pt, "
        "teacher_training#unlabelled_dir=DIR/imagesTs, teacher#prompt=box+points",
    )
    add_override_option(
        ap, "--eval_set", "evaluate.json override for both scorings (e.g. the network sizes set by --set)"
    )
    args = ap.parse_args(argv)

    from bundle.utils.checkpoint import load_model_info
    from bundle.utils.cli import parse_overrides

    try:
        common, teacher_set, eval_set = (parse_overrides(x) for x in (args.set, args.teacher_set, args.eval_set))
    except ValueError as e:
        ap.error(str(e))
    out = Path(args.output_dir).resolve()
    common = {"dataset_dir": args.dataset_dir, "max_epochs": args.max_epochs, "resume": False, **common}
    runs = {
        "without teacher": {},
        "with SAM2 teacher": {
            "teacher#checkpoint": str(Path(args.sam2_checkpoint).resolve()),
            "teacher#image_size": args.image_size,
            "teacher_training#weight": args.weight,
            **teacher_set,
        },
    }
    rows = []
    for name, extra in runs.items():
        run_dir = out / name.replace(" ", "_")
        start = time.perf_counter()
        _bundle("training", "train.json", output_dir=str(run_dir), **common, **extra)
        seconds = time.perf_counter() - start
        _bundle(
            "evaluating",
            "evaluate.json",
            dataset_dir=args.dataset_dir,
            eval_split=args.eval_split,
            ckpt_path=str(run_dir / "model.pt"),
            output_dir=str(run_dir / "evaluation"),
            **eval_set,
        )
        meta = load_model_info(run_dir / "model.pt")["metadata"]
        metrics = json.loads((run_dir / "evaluation" / "metrics.json").read_text())
        rows.append((name, meta.get("metric"), meta.get("epoch"), metrics["mean"]["dice"], seconds))

    print(f"\n{args.max_epochs} epochs each, same seed; evaluation on the {args.eval_split} split\n")
    print("| run | best validation Dice (epoch) | evaluation mean Dice | wall time |")
    print("|---|---:|---:|---:|")
    for name, best, epoch, dice, seconds in rows:
        # no validation ran when max_epochs < val_interval: the final weights were saved instead
        best_text = "no validation" if best is None else f"{best:.3f} ({epoch})"
        print(f"| {name} | {best_text} | {dice:.3f} | {seconds / 60:.1f} min |")
    print("\nWith a randomly initialised SAM2 checkpoint this shows only that the plumbing runs; it is not a result.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
