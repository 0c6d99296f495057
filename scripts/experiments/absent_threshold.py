#!/usr/bin/env python
"""Choose the "absent" rule (``min_answer_ml``, ``answer_volume_fraction``) from evaluations run with
``--absent_prompts``.

The rule turns a weak answer into "absent": a class whose whole answer is at most its threshold becomes background
(``bundle.transforms.DropSmallAnswersd``). The threshold is ``T`` ml for every structure (``min_answer_ml``), or
``f`` times the smallest volume the structure had in the model's training labels (``answer_volume_fraction``; the
model file records those volumes: ``--ckpt_path``; for a model trained before 0.16, ``--dataset_dir`` measures its
training labels). It trades two things, both read from evaluation folders of
``configs/evaluate.json`` (run on validation data, so the test split stays unseen):

- ``absent_prompts.json``: the answer volumes to prompts of structures the images do not hold. The rule empties
  those at or under their threshold.
- ``metrics.json``: each labelled structure's predicted and reference volume (``volume_ml``, ``reference_ml``) and
  Dice. The rule also erases a true answer under its threshold: its Dice becomes 0 when the structure is there, 1
  when it is not.

For each candidate rule (the report's ``thresholds_ml``; with ``--ckpt_path``, also each of ``--fractions``) the
table gives the fraction of empty absent answers, per folder and overall, their mean false-positive volume, the
labelled answers the rule would erase, and the mean Dice with the rule. The chosen rule is, of those that reach
``--target`` empty answers without lowering any folder's mean Dice by more than ``--max_dice_loss``, the one that
costs the least Dice (the first listed on a tie: the smallest ``T``, then the smallest ``f``); failing that, the
one with the most empty answers within the Dice limit.

    python scripts/experiments/absent_threshold.py runs/suite/val_*/ --target 0.95 --ckpt_path runs/suite/model.pt
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bundle.data import structure_volumes_ml
from bundle.utils.checkpoint import model_structure_volumes


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


Rule = Callable[[str], float]  # structure name -> the largest answer (ml) that counts as absent


def mean_dice_with_rule(metrics: Mapping[str, Any], threshold_ml: float | Rule) -> tuple[float, int]:
    """The evaluation's mean Dice (over classes, of the mean over cases) if answers at or under their threshold were
    erased, and how many true answers (structure present, answer not empty) the rule erases.

    Args:
        metrics: a ``metrics.json`` with per-case volumes.
        threshold_ml: the rule's ``T``, or a structure name -> threshold function.
    """
    rule = threshold_ml if callable(threshold_ml) else (lambda _, t=float(threshold_ml): t)
    per_class, erased = [], 0
    for name in metrics.get("classes", {}):
        limit = rule(name)
        values = []
        for case in metrics["cases"]:
            vals = case.get(name)
            if not vals or vals.get("dice") is None:
                continue
            dice, volume, reference = vals["dice"], vals["volume_ml"], vals["reference_ml"]
            if 0 < volume <= limit:
                erased += reference > 0
                dice = 0.0 if reference > 0 else 1.0
            values.append(dice)
        if values:
            per_class.append(float(np.mean(values)))
    return (float(np.mean(per_class)) if per_class else math.nan), erased


def candidate_rules(
    thresholds: Sequence[float], fractions: Sequence[float] = (), volumes: Mapping[str, float] | None = None
) -> list[tuple[float, float, Rule]]:
    """``(T, f, rule)`` for each threshold ``T`` (``f`` = 0), then, with ``volumes``, each fraction ``f`` (``T`` = 0).

    Args:
        thresholds: ``min_answer_ml`` candidates.
        fractions: ``answer_volume_fraction`` candidates.
        volumes: ``{structure: smallest training volume in ml}`` (the model file's); none: no fraction rules.
    """
    from bundle.transforms import answer_thresholds_ml

    rules: list[tuple[float, float, Rule]] = [(float(t), 0.0, lambda _, t=float(t): t) for t in thresholds]
    if volumes:
        for f in sorted(float(f) for f in fractions if f > 0):
            rules.append((0.0, f, lambda name, f=f: answer_thresholds_ml([name], 0.0, f, volumes)[0]))
    return rules


def rule_table(
    evaluations: Mapping[str, tuple[Mapping[str, Any], Mapping[str, Any]]],
    thresholds: Sequence[float],
    fractions: Sequence[float] = (),
    volumes: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """One row per rule (:func:`candidate_rules`): empty fraction of absent answers (per folder and overall), their
    mean false-positive volume, true answers erased, and each folder's mean Dice with the rule and its change.

    Args:
        evaluations: ``{name: (absent report, metrics)}``.
        thresholds: the candidate ``T`` values (ml).
        fractions: the candidate ``f`` values (with ``volumes``).
        volumes: the model's structure volumes (ml).
    """
    rows = []
    for t, f, rule in candidate_rules(thresholds, fractions, volumes):
        row: dict[str, Any] = {"threshold_ml": t, "fraction": f, "empty": {}, "dice": {}, "dice_change": {}}
        row["erased"] = 0
        every, limits = [], []
        for name, (absent, metrics) in evaluations.items():
            pairs = [(v, rule(p)) for c in absent["cases"] for p, v in c["volumes_ml"].items()]
            volumes_ml = np.array([v for v, _ in pairs], dtype=np.float64)
            limit = np.array([lim for _, lim in pairs], dtype=np.float64)
            every.append(volumes_ml)
            limits.append(limit)
            row["empty"][name] = float(np.mean(volumes_ml <= limit)) if volumes_ml.size else math.nan
            base, _ = mean_dice_with_rule(metrics, 0.0)
            dice, erased = mean_dice_with_rule(metrics, rule)
            row["dice"][name], row["dice_change"][name] = dice, dice - base
            row["erased"] += erased
        volumes_ml = np.concatenate(every) if every else np.zeros(0)
        limit = np.concatenate(limits) if limits else np.zeros(0)
        row["empty_all"] = float(np.mean(volumes_ml <= limit)) if volumes_ml.size else math.nan
        kept = volumes_ml[volumes_ml > limit]
        row["false_positive_ml"] = float(kept.mean()) if kept.size else 0.0
        row["answers"] = int(volumes_ml.size)
        rows.append(row)
    return rows


def choose(rows: Sequence[Mapping[str, Any]], target: float, max_dice_loss: float) -> tuple[float, float, str]:
    """The rule's ``(T, f)`` and why (see the module docstring).

    Args:
        rows: :func:`rule_table`'s rows, in its order.
        target: the wanted fraction of empty absent answers.
        max_dice_loss: the largest drop of any folder's mean Dice allowed (Dice units).
    """
    safe = [r for r in rows if all(c >= -max_dice_loss for c in r["dice_change"].values())]
    if not safe:
        return 0.0, 0.0, "every rule costs more Dice than allowed: rule off"
    reaching = [r for r in safe if r["empty_all"] >= target]
    if reaching:
        best = min(reaching, key=lambda r: -sum(min(c, 0.0) for c in r["dice_change"].values()))
        return (
            best["threshold_ml"],
            best["fraction"],
            f"the least Dice cost of the rules with >= {100 * target:g} % empty ({100 * best['empty_all']:.1f} %)",
        )
    best = max(safe, key=lambda r: r["empty_all"])
    return (
        best["threshold_ml"],
        best["fraction"],
        f"target not reached: most empty answers within the Dice limit ({100 * best['empty_all']:.1f} %)",
    )


def format_rows(rows: Sequence[Mapping[str, Any]]) -> str:
    """A markdown table of :func:`rule_table`'s rows."""
    names = list(rows[0]["empty"]) if rows else []
    head = [
        "T ml",
        "f",
        "empty (all)",
        *[f"empty {n}" for n in names],
        "FP ml",
        "erased",
        *[f"Dice {n}" for n in names],
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for r in rows:
        cells = [f"{r['threshold_ml']:g}", f"{r['fraction']:g}", f"{100 * r['empty_all']:.1f} %"]
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
    parser.add_argument(
        "--ckpt_path", type=Path, default=None, help="the model file, whose training volumes scale the fraction rules"
    )
    parser.add_argument(
        "--dataset_dir",
        default=None,
        help="the training data (folder or suite, default split) whose volumes scale the fraction rules, for a model "
        "file that records none (trained before 0.16)",
    )
    parser.add_argument(
        "--fractions",
        type=lambda v: [float(x) for x in v.split(",") if x.strip()],
        default=[0.02, 0.05, 0.1, 0.2, 0.3, 0.5],
        help="answer_volume_fraction candidates, comma-separated (with --ckpt_path)",
    )
    parser.add_argument("--output_file", type=Path, default=None, help="also write the rows and the choice as JSON")
    args = parser.parse_args(argv)
    try:
        evaluations = {f.name: read_evaluation(f) for f in args.folders}
        volumes = model_structure_volumes(args.ckpt_path) if args.ckpt_path else {}
        if not volumes and args.dataset_dir:
            volumes = structure_volumes_ml(args.dataset_dir, "train")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.ckpt_path and not volumes:
        print(f"note: {args.ckpt_path} records no structure volumes (trained before 0.16): no fraction rules")
    if volumes:
        print("smallest training volume per structure (ml): " + ", ".join(f"{k} {v:.3g}" for k, v in volumes.items()))
    thresholds = sorted({float(t) for absent, _ in evaluations.values() for t in absent.get("thresholds_ml", [0.0])})
    rows = rule_table(evaluations, thresholds, args.fractions, volumes)
    threshold, fraction, why = choose(rows, args.target, args.max_dice_loss)
    print(format_rows(rows))
    print(f"\nmin_answer_ml = {threshold:g}, answer_volume_fraction = {fraction:g}: {why}")
    if args.output_file:
        choice = {"min_answer_ml": threshold, "answer_volume_fraction": fraction, "why": why}
        args.output_file.write_text(json.dumps({"rows": rows, **choice}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
