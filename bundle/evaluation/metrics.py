"""Per-case, per-class Dice, IoU, HD95, surface Dice at 1 mm, precision and recall, and their summary."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["METRICS", "SURFACE_TOLERANCE_MM", "hd95", "surface_dice", "case_metrics", "summarize", "format_table"]

METRICS = ("dice", "iou", "hd95", "surface_dice", "precision", "recall")
# per case only (not averaged): the predicted and reference volumes in ml, for volumetry and the "absent" rule
CASE_VOLUMES = ("volume_ml", "reference_ml")
# the normalised surface Dice's tolerance: one voxel of the MSD hippocampus crops, as in the MSD's own reporting
SURFACE_TOLERANCE_MM = 1.0


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> float:
    """MONAI's 95th-percentile Hausdorff distance (mm) between two binary masks; NaN when either is empty.

    Args:
        pred: the predicted mask.
        gt: the ground-truth mask (same shape).
        spacing: voxel size per axis, in mm.

    Returns:
        The distance in mm, or NaN.
    """
    from monai.metrics import compute_hausdorff_distance

    if not pred.any() or not gt.any():
        return math.nan
    p = torch.as_tensor(pred[None, None])
    g = torch.as_tensor(gt[None, None])
    return float(
        compute_hausdorff_distance(p, g, include_background=True, percentile=95, spacing=[float(s) for s in spacing])
    )


def surface_dice(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], tolerance: float = SURFACE_TOLERANCE_MM
) -> float:
    """MONAI's normalised surface Dice: the fraction of both masks' boundaries within ``tolerance`` mm of the other's.

    Args:
        pred: the predicted mask.
        gt: the ground-truth mask (same shape).
        spacing: voxel size per axis, in mm.
        tolerance: the distance (mm) within which a boundary voxel counts as matched.

    Returns:
        A value in [0, 1]: 1 when both masks are empty, 0 when exactly one is.
    """
    from monai.metrics import compute_surface_dice

    if not pred.any() or not gt.any():
        return float(not pred.any() and not gt.any())
    p = torch.as_tensor(pred[None, None])
    g = torch.as_tensor(gt[None, None])
    value = compute_surface_dice(
        p, g, class_thresholds=[float(tolerance)], include_background=True, spacing=[float(s) for s in spacing]
    )
    return float(value)


def case_metrics(
    pred: np.ndarray, gt: np.ndarray, classes: Mapping[int, str], spacing: Sequence[float] | None = None
) -> dict[str, dict[str, float]]:
    """``{class name: {dice, iou, hd95, surface_dice, precision, recall, volume_ml, reference_ml}}`` for integer label
    maps of the same shape. The volumes (predicted and reference, in ml) are per case only: the summary averages
    :data:`METRICS`.

    Args:
        pred: the predicted label map.
        gt: the ground-truth label map.
        classes: ``{label value: class name}`` to score.
        spacing: voxel size per axis in mm (default 1).

    Returns:
        The metrics per class (both empty: 1, 1, 0, 1, 1, 1, and volumes 0).

    Raises:
        ValueError: the shapes differ.
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
    spacing = list(spacing) if spacing is not None else [1.0] * gt.ndim
    voxel_ml = float(np.prod(spacing)) / 1000.0
    out: dict[str, dict[str, float]] = {}
    for value, name in classes.items():
        p, g = pred == value, gt == value
        tp = float(np.logical_and(p, g).sum())
        np_, ng = float(p.sum()), float(g.sum())
        volumes = {"volume_ml": np_ * voxel_ml, "reference_ml": ng * voxel_ml}
        if np_ == 0 and ng == 0:
            out[name] = {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "surface_dice": 1.0, "precision": 1.0, "recall": 1.0}
            out[name].update(volumes)
            continue
        out[name] = {
            **volumes,
            "dice": 2 * tp / (np_ + ng),
            "iou": tp / (np_ + ng - tp),
            "hd95": hd95(p, g, spacing),
            "surface_dice": surface_dice(p, g, spacing),
            "precision": tp / np_ if np_ else 0.0,
            "recall": tp / ng if ng else 0.0,
        }
    return out


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def summarize(cases: Sequence[Mapping[str, Any]], class_names: Sequence[str]) -> dict[str, Any]:
    """The ``metrics.json`` structure from per-case results (``{"image", NAME: {...}}``).

    Args:
        cases: the per-case results.
        class_names: the classes scored.

    Returns:
        ``{"mean", "classes", "cases"}``; non-finite values become ``None``.
    """
    classes = {name: {m: _mean([c[name][m] for c in cases if name in c]) for m in METRICS} for name in class_names}
    mean = {m: _mean([classes[n][m] for n in class_names if classes[n][m] is not None]) for m in METRICS}

    def _clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, Mapping):
            return {k: _clean(x) for k, x in v.items()}
        return v

    return {"mean": mean, "classes": classes, "cases": [_clean(dict(c)) for c in cases]}


def format_table(summary: Mapping[str, Any]) -> str:
    """A plain-text table: one row per class and the mean.

    Args:
        summary: the result of :func:`summarize`.

    Returns:
        The table.
    """

    def fmt(v: float | None) -> str:
        return "   -  " if v is None else f"{v:6.3f}"

    rows = [("class", *METRICS)]
    rows += [(name, *(fmt(vals[m]) for m in METRICS)) for name, vals in summary["classes"].items()]
    rows.append(("mean", *(fmt(summary["mean"][m]) for m in METRICS)))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{r[0]:<{width}}  " + "  ".join(f"{x:>9}" for x in r[1:]) for r in rows)
