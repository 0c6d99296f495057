#!/usr/bin/env python
"""Choose the "absent" rule (``min_answer_ml``) from evaluations run with ``--absent_prompts``.

The rule turns a weak answer into "absent": a class whose whole answer is at most ``T`` ml becomes background
(``bundle.transforms.DropSmallAnswersd``). It trades two things, both read from evaluation folders of
``configs/evaluate.json`` (run on validation data, so the test split stays unseen):

- ``absent_prompts.json``: the answer volumes to prompts of structures the images do not hold. The rule empties
  those of at most ``T`` ml.
- ``metrics.json``: each labelled structure's predicted and reference volume (``volume_ml``, ``reference_ml``) and
  Dice. The rule also erases a true answer of at most ``T`` ml: its Dice becomes 0 when the structure is there, 1
  when it is not.

For each candidate ``T`` (the report's ``thresholds_ml``) the table gives the fraction of empty absent answers, per
folder and overall, their mean false-positive volume, the labelled answers the rule would erase, and the mean Dice
with the rule. The chosen ``T`` is the smallest that reaches ``--target`` empty answers without lowering any
folder's mean Dice by more than ``--max_dice_loss``; failing that, the one with the most empty answers within the
Dice limit.

    python scripts/experiments/absent_threshold.py runs/suite/val_*/ --target 0.95
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def read_evaluation(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``absent_prompts.json`` and ``metrics.json`` of one evaluation folder.

    Args:
        folder: an evaluation's ``output_dir``.

    Returns:
        ``(absent report, metrics)``.

    Raises:
        ValueError: naming the file when one is missing or lacks what the rule needs.
    """
    out = []
    for name, needed in (("absent_prompts.json", "cases"), ("metrics.json", "cases")):
        path = Path(folder) / name
        if not path.is_file():
            raise ValueError(f"{path}: not found (run evaluate.json with --absent_prompts into {folder})")
        data = json.loads(path.read_text())
        if not isinstance(data, Mapping) or not isinstance(data.get(needed), list):
            raise ValueError(f"{path}: no '{needed}' list")
        out.append(dict(data))
    absent, metrics = out
    for case in metrics["cases"]:
        for name in metrics.get("classes", {}):
            if name in case and "volume_ml" not in case[name]:
                raise ValueError(f"{Path(folder) / 'metrics.json'}: no volume_ml per case (written before 0.9)")
    return absent, metrics


def mean_dice_with_rule(metrics: Mapping[str, Any], threshold_ml: float) -> tuple[float, int]:
    """The evaluation's mean Dice (over classes, of the mean over cases) if answers of at most ``threshold_ml`` were
    erased, and how many true answers (structure present, answer not empty) the rule erases.

    Args:
        metrics: a ``metrics.json`` with per-case volumes.
        threshold_ml: the rule's ``T``.
    """
    per_class, erased = [], 0
    for name in metrics.get("classes", {}):
        values = []
        for case in metrics["cases"]:
            vals = case.get(name)
            if not vals or vals.get("dice") is None:
                continue
            dice, volume, reference = vals["dice"], vals["volume_ml"], vals["reference_ml"]
            if 0 < volume <= threshold_ml:
                erased += reference > 0
                dice = 0.0 if reference > 0 else 1.0
            values.append(dice)
        if values:
            per_class.append(float(np.mean(values)))
    return (float(np.mean(per_class)) if per_class else math.nan), erased


def rule_table(
    evaluations: Mapping[str, tuple[Mapping[str, Any], Mapping[str, Any]]], thresholds: Sequence[float]
) -> list[dict[str, Any]]:
    """One row per threshold: empty fraction of absent answers (per folder and overall), their mean false-positive
    volume, true answers erased, and each folder's mean Dice with the rule and its change.

    Args:
        evaluations: ``{name: (absent report, metrics)}``.
        thresholds: the candidate ``T`` values (ml).
    """
    rows = []
    for t in thresholds:
        row: dict[str, Any] = {"threshold_ml": float(t), "empty": {}, "dice": {}, "dice_change": {}, "erased": 0}
        every = []
        for name, (absent, metrics) in evaluations.items():
            volumes = np.array([v for c in absent["cases"] for v in c["volumes_ml"].values()], dtype=np.float64)
            every.append(volumes)
            row["empty"][name] = float(np.mean(volumes <= t)) if volumes.size else math.nan
            base, _ = mean_dice_with_rule(metrics, 0.0)
            dice, erased = mean_dice_with_rule(metrics, t)
            row["dice"][name], row["dice_change"][name] = dice, dice - base
            row["erased"] += erased
        volumes = np.concatenate(every) if every else np.zeros(0)
        row["empty_all"] = float(np.mean(volumes <= t)) if volumes.size else math.nan
        kept = volumes[volumes > t]
        row["false_positive_ml"] = float(kept.mean()) if kept.size else 0.0
        row["answers"] = int(volumes.size)
        rows.append(row)
    return rows


def choose(rows: Sequence[Mapping[str, Any]], target: float, max_dice_loss: float) -> tuple[float, str]:
    """The rule's ``T`` and why (see the module docstring).

    Args:
        rows: :func:`rule_table`'s rows, thresholds ascending.
        target: the wanted fraction of empty absent answers.
        max_dice_loss: the largest drop of any folder's mean Dice allowed (Dice units).
    """
    safe = [r for r in rows if all(c >= -max_dice_loss for c in r["dice_change"].values())]
    if not safe:
        return 0.0, "every threshold costs more Dice than allowed: rule off"
    for r in safe:
        if r["empty_all"] >= target:
            return (
                r["threshold_ml"],
                f"smallest threshold with {100 * r['empty_all']:.1f} % >= {100 * target:g} % empty",
            )
    best = max(safe, key=lambda r: (r["empty_all"], -r["threshold_ml"]))
    return (
        best["threshold_ml"],
        f"target not reached: most empty answers within the Dice limit ({100 * best['empty_all']:.1f} %)",
    )


def format_rows(rows: Sequence[Mapping[str, Any]]) -> str:
    """A markdown table of :func:`rule_table`'s rows."""
    names = list(rows[0]["empty"]) if rows else []
    head = ["T ml", "empty (all)", *[f"empty {n}" for n in names], "FP ml", "erased", *[f"Dice {n}" for n in names]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for r in rows:
        cells = [f"{r['threshold_ml']:g}", f"{100 * r['empty_all']:.1f} %"]
        cells += [f"{100 * r['empty'][n]:.1f} %" for n in names]
        cells += [f"{r['false_positive_ml']:.2f}", str(r["erased"])]
        cells += [f"{r['dice'][n]:.3f} ({100 * r['dice_change'][n]:+.1f})" for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="evaluation output folders (one per data set)")
    parser.add_argument("--target", type=float, default=0.95, help="wanted fraction of empty absent answers")
    parser.add_argument("--max_dice_loss", type=float, default=0.002, help="largest mean-Dice drop per folder")
    parser.add_argument("--output_file", type=Path, default=None, help="also write the rows and the choice as JSON")
    args = parser.parse_args(argv)
    try:
        evaluations = {f.name: read_evaluation(f) for f in args.folders}
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    thresholds = sorted({float(t) for absent, _ in evaluations.values() for t in absent.get("thresholds_ml", [0.0])})
    rows = rule_table(evaluations, thresholds)
    threshold, why = choose(rows, args.target, args.max_dice_loss)
    print(format_rows(rows))
    print(f"\nmin_answer_ml = {threshold:g}: {why}")
    if args.output_file:
        args.output_file.write_text(json.dumps({"rows": rows, "min_answer_ml": threshold, "why": why}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
