#!/usr/bin/env python
"""With and without the SAM2 teacher: two training runs of train.json, same seed and epochs, scored the same way.

Each run is the bundle's own training workflow (``monai.bundle.run("training", ...)``, as the bundle command, in
this process; the second with ``teacher#checkpoint``), then evaluate.json on ``--eval_split`` (default: the
validation split). A markdown table gives each run's best validation Dice, its
evaluation mean Dice and its wall time (the teacher's cache filling included).

The comparison means something only with real SAM2 weights (e.g. sam2.1_hiera_tiny.pt from
https://github.com/facebookresearch/sam2). With a randomly initialised SAM2 it only shows that the plumbing runs:
do not read those numbers as results.

    python scripts/ablate_teacher.py --dataset_dir /path/to/Task04_Hippocampus \\
        --checkpoint /path/to/sam2.1_hiera_tiny.pt --max_epochs 60 --output_dir runs/ablate_teacher
    # the teacher on unlabelled cases, prompted by the released model's predictions
    python scripts/ablate_teacher.py --dataset_dir DIR --checkpoint SAM2.pt --teacher_set teacher#prompt_source=student \\
        --teacher_set teacher#student_checkpoint=models/model.pt --teacher_set teacher#unlabelled_dir=DIR/imagesTs
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _bundle(run_id: str, config: str, **overrides) -> None:
    """``python -m monai.bundle run RUN_ID --config_file configs/CONFIG ...``, in this process (one start-up)."""
    from monai.bundle import run

    run(run_id, config_file=str(ROOT / "configs" / config), meta_file=str(ROOT / "configs" / "metadata.json"),
        logging_file=str(ROOT / "configs" / "logging.conf"), bundle_root=str(ROOT), **overrides)


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
                    help="further train.json override for both runs (VALUE: JSON or a Python literal, else a string)")
    ap.add_argument("--teacher_set", action="append", default=[], metavar="KEY=VALUE",
                    help="override for the teacher run only, e.g. teacher#loss=dice, teacher#prompt_source=student, "
                         "teacher#student_checkpoint=models/model.pt, teacher#unlabelled_dir=DIR/imagesTs")
    ap.add_argument("--eval_set", action="append", default=[], metavar="KEY=VALUE",
                    help="evaluate.json override for both scorings (e.g. the network sizes set by --set)")
    args = ap.parse_args(argv)

    import torch

    from bundle.utils.cli import parse_overrides

    try:
        common, teacher_set, eval_set = (parse_overrides(x) for x in (args.set, args.teacher_set, args.eval_set))
    except ValueError as e:
        ap.error(str(e))
    out = Path(args.output_dir).resolve()
    common = {"dataset_dir": args.dataset_dir, "max_epochs": args.max_epochs, "resume": False, **common}
    runs = {
        "without teacher": {},
        "with SAM2 teacher": {"teacher#checkpoint": str(Path(args.checkpoint).resolve()),
                              "teacher#image_size": args.image_size, "teacher#weight": args.weight, **teacher_set},
    }
    rows = []
    for name, extra in runs.items():
        run_dir = out / name.replace(" ", "_")
        start = time.perf_counter()
        _bundle("training", "train.json", output_dir=str(run_dir), **common, **extra)
        seconds = time.perf_counter() - start
        _bundle("evaluating", "evaluate.json", dataset_dir=args.dataset_dir, eval_split=args.eval_split,
                ckpt_path=str(run_dir / "model.pt"), output_dir=str(run_dir / "evaluation"), **eval_set)
        meta = torch.load(run_dir / "model.pt", weights_only=True)["metadata"]
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
