#!/usr/bin/env python
"""Paired per-case comparison of two evaluations of the same cases (two ``metrics.json`` files).

Cases are matched by the file name of their ``image`` entry (so an evaluation that recorded label paths, as the
bundle's did before 0.8, still matches one that records image paths: MSD images and labels share names); each
case's value is the mean over the classes both files score. The
table gives both means, the mean paired difference (A - B) with a percentile bootstrap 95 % interval (cases
resampled with replacement, seeded), the Wilcoxon signed-rank test's two-sided p-value (scipy), and how many cases
A wins, ties and loses.

    python scripts/experiments/compare_cases.py runs/segone/eval_test/metrics.json runs/unet/metrics.json \\
        --names SegOne UNet --metrics dice hd95 surface_dice
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


def load_cases(path: Path) -> dict[str, dict[str, Any]]:
    """``{image file name: case}`` from a ``metrics.json`` (``bundle.evaluation.summarize``'s format).

    Args:
        path: the file.

    Returns:
        The cases by the file name of their image.

    Raises:
        ValueError: naming the file when it holds no ``cases`` list, a case has no ``image``, or two cases share a
            file name.
    """
    data = json.loads(Path(path).read_text())
    cases = data.get("cases") if isinstance(data, Mapping) else None
    if not isinstance(cases, list) or not all(isinstance(c, Mapping) and "image" in c for c in cases):
        raise ValueError(f"{path}: not a metrics.json with per-case results ('cases' entries with an 'image')")
    names = [Path(str(c["image"])).name for c in cases]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{path}: cases share file names {repeated[:5]}; they cannot be matched by name")
    return {n: dict(c) for n, c in zip(names, cases)}


def case_values(case: Mapping[str, Any], classes: Sequence[str], metric: str) -> float:
    """The mean of ``metric`` over ``classes`` for one case (NaN when no class has a finite value).

    Args:
        case: one case of ``metrics.json``.
        classes: the class names to average.
        metric: the metric's key.

    Returns:
        The mean.
    """
    values = [case[c].get(metric) for c in classes if isinstance(case.get(c), Mapping)]
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.mean(finite)) if finite else math.nan


def paired_stats(a: np.ndarray, b: np.ndarray, resamples: int = 10000, seed: int = 0) -> dict[str, float]:
    """Mean paired difference ``a - b`` with a bootstrap 95 % interval, Wilcoxon p-value and win counts.

    Args:
        a: per-case values of the first evaluation.
        b: the same cases' values of the second (same order and length).
        resamples: bootstrap resamples.
        seed: the bootstrap's seed.

    Returns:
        ``{"n", "mean_a", "mean_b", "diff", "ci_low", "ci_high", "p_wilcoxon", "wins", "ties", "losses"}``.

    Raises:
        ValueError: when the arrays differ in length or are empty.
    """
    from scipy.stats import wilcoxon

    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"need paired, non-empty values; got {a.shape} and {b.shape}")
    d = a - b
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, d.size, size=(resamples, d.size))].mean(1)
    nonzero = d[d != 0]
    p = float(wilcoxon(nonzero).pvalue) if nonzero.size else 1.0
    return {
        "n": int(d.size),
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "diff": float(d.mean()),
        "ci_low": float(np.percentile(boot, 2.5)),
        "ci_high": float(np.percentile(boot, 97.5)),
        "p_wilcoxon": p,
        "wins": int((d > 0).sum()),
        "ties": int((d == 0).sum()),
        "losses": int((d < 0).sum()),
    }


def compare(
    path_a: Path, path_b: Path, metrics: Sequence[str], classes: Sequence[str] | None = None
) -> dict[str, dict[str, float]]:
    """Paired statistics per metric over the cases both files hold.

    Args:
        path_a: the first ``metrics.json``.
        path_b: the second.
        metrics: metric keys (e.g. ``dice``, ``hd95``).
        classes: class names to average per case (default: the classes both files score).

    Returns:
        ``{metric: paired_stats(...)}``; cases without a finite value in either file are left out of that metric,
        and a metric no shared case has (e.g. one an older evaluation did not compute) is left out.

    Raises:
        ValueError: naming both files when they share no case or no class.
    """
    a, b = load_cases(path_a), load_cases(path_b)
    shared = sorted(set(a) & set(b))
    if not shared:
        raise ValueError(f"{path_a} and {path_b} share no case (matched by the file name of 'image')")
    if classes is None:
        names_a = {k for c in a.values() for k, v in c.items() if isinstance(v, Mapping)}
        names_b = {k for c in b.values() for k, v in c.items() if isinstance(v, Mapping)}
        classes = sorted(names_a & names_b)
    if not classes:
        raise ValueError(f"{path_a} and {path_b} share no class")
    out = {}
    for metric in metrics:
        pairs = [(case_values(a[i], classes, metric), case_values(b[i], classes, metric)) for i in shared]
        pairs = [(x, y) for x, y in pairs if math.isfinite(x) and math.isfinite(y)]
        if not pairs:
            continue
        out[metric] = paired_stats(np.array([x for x, _ in pairs]), np.array([y for _, y in pairs]))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("metrics_a", type=Path, help="first metrics.json")
    ap.add_argument("metrics_b", type=Path, help="second metrics.json (the same cases)")
    ap.add_argument("--names", nargs=2, default=["A", "B"], help="names of the two for the table")
    ap.add_argument("--metrics", nargs="+", default=["dice", "hd95", "surface_dice"], help="metric keys")
    ap.add_argument("--classes", nargs="+", default=None, help="class names to average (default: shared ones)")
    args = ap.parse_args(argv)
    try:
        results = compare(args.metrics_a, args.metrics_b, args.metrics, args.classes)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    a, b = args.names
    print(f"| metric | cases | {a} | {b} | {a} - {b} (95 % bootstrap) | Wilcoxon p | {a} better / tie / worse |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for metric, s in results.items():
        # for a distance, lower is better: count wins the other way
        better, worse = (s["losses"], s["wins"]) if metric.startswith("hd") else (s["wins"], s["losses"])
        print(
            f"| {metric} | {s['n']} | {s['mean_a']:.4f} | {s['mean_b']:.4f} | {s['diff']:+.4f} "
            f"({s['ci_low']:+.4f}, {s['ci_high']:+.4f}) | {s['p_wilcoxon']:.3g} | {better} / {s['ties']} / {worse} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
