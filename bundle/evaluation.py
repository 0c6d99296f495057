"""Evaluation: per-case, per-class Dice, IoU, HD95, precision and recall, and the metrics report.

:func:`case_metrics` scores one predicted label map against its ground truth; :class:`MetricsReport` is an engine
handler that scores every case of an evaluation run and writes ``metrics.json``::

    {"mean": {"dice", "iou", "hd95", "precision", "recall"},
     "classes": {NAME: {same keys}},
     "cases": [{"image": path, NAME: {same keys}, ...}]}

plus ``metrics.csv`` (one row per case and class), and logs a summary table.

Conventions: a class absent from both prediction and ground truth scores Dice, IoU, precision and recall 1 and HD95
0; when it is absent from only one of them, Dice and IoU are 0 and HD95 is undefined (``null``, left out of means).
HD95 is MONAI's (``monai.metrics.compute_hausdorff_distance``, 95th percentile), in millimetres from the spacing.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from ignite.engine import Engine, Events

__all__ = ["METRICS", "case_metrics", "summarize", "format_table", "MetricsReport"]

logger = logging.getLogger(__name__)

METRICS = ("dice", "iou", "hd95", "precision", "recall")


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> float:
    """MONAI's 95th-percentile Hausdorff distance (mm) between two binary masks; NaN when either is empty."""
    from monai.metrics import compute_hausdorff_distance

    if not pred.any() or not gt.any():
        return math.nan
    p = torch.as_tensor(pred[None, None])
    g = torch.as_tensor(gt[None, None])
    return float(compute_hausdorff_distance(p, g, include_background=True, percentile=95, spacing=[float(s) for s in spacing]))


def case_metrics(
    pred: np.ndarray, gt: np.ndarray, classes: Mapping[int, str], spacing: Optional[Sequence[float]] = None
) -> Dict[str, Dict[str, float]]:
    """``{class name: {dice, iou, hd95, precision, recall}}`` for integer label maps of the same shape."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
    spacing = list(spacing) if spacing is not None else [1.0] * gt.ndim
    out: Dict[str, Dict[str, float]] = {}
    for value, name in classes.items():
        p, g = pred == value, gt == value
        tp = float(np.logical_and(p, g).sum())
        np_, ng = float(p.sum()), float(g.sum())
        if np_ == 0 and ng == 0:
            out[name] = {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "precision": 1.0, "recall": 1.0}
            continue
        out[name] = {
            "dice": 2 * tp / (np_ + ng),
            "iou": tp / (np_ + ng - tp),
            "hd95": hd95(p, g, spacing),
            "precision": tp / np_ if np_ else 0.0,
            "recall": tp / ng if ng else 0.0,
        }
    return out


def _mean(values: List[float]) -> Optional[float]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def summarize(cases: Sequence[Mapping[str, Any]], class_names: Sequence[str]) -> Dict[str, Any]:
    """The ``metrics.json`` structure from per-case results (``{"image", NAME: {...}}``)."""
    classes = {
        name: {m: _mean([c[name][m] for c in cases if name in c]) for m in METRICS} for name in class_names
    }
    mean = {m: _mean([classes[n][m] for n in class_names if classes[n][m] is not None]) for m in METRICS}

    def _clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, Mapping):
            return {k: _clean(x) for k, x in v.items()}
        return v

    return {"mean": mean, "classes": classes, "cases": [_clean(dict(c)) for c in cases]}


def format_table(summary: Mapping[str, Any]) -> str:
    """A plain-text table: one row per class and the mean."""

    def fmt(v: Optional[float]) -> str:
        return "   -  " if v is None else f"{v:6.3f}"

    rows = [("class", *METRICS)]
    rows += [(name, *(fmt(vals[m]) for m in METRICS)) for name, vals in summary["classes"].items()]
    rows.append(("mean", *(fmt(summary["mean"][m]) for m in METRICS)))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{r[0]:<{width}}  " + "  ".join(f"{x:>9}" for x in r[1:]) for r in rows)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class MetricsReport:
    """Scores every evaluated case and writes ``metrics.json``, ``metrics.csv`` and a summary to the log.

    Args:
        output_dir: where the files go.
        class_names: ``{label value: name}`` scored (background excluded).
        pred_key, label_key: keys of the predicted and ground-truth label maps (``[1, *S]``, same grid) in the
            engine output after postprocessing.
    """

    def __init__(
        self,
        output_dir: Union[str, os.PathLike],
        class_names: Mapping[int, str],
        pred_key: str = "pred",
        label_key: str = "label",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.class_names = {int(k): str(v) for k, v in class_names.items()}
        self.pred_key, self.label_key = pred_key, label_key
        self.cases: List[Dict[str, Any]] = []
        self.summary: Optional[Dict[str, Any]] = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: self.cases.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._on_iteration)
        engine.add_event_handler(Events.COMPLETED, self._on_completed)

    def _on_iteration(self, engine: Engine) -> None:
        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        for out in outputs:
            if not isinstance(out, Mapping) or self.pred_key not in out or self.label_key not in out:
                continue  # a failed case (reported by the engine)
            pred, label = out[self.pred_key], out[self.label_key]
            affine = np.asarray(getattr(label, "affine", np.eye(4)), dtype=np.float64)
            spacing = np.linalg.norm(affine[:-1, :-1], axis=0).tolist()
            p = torch.as_tensor(pred).detach().cpu().numpy()[0]
            g = torch.as_tensor(label).detach().cpu().numpy()[0]
            meta = getattr(label, "meta", {}) or {}
            case: Dict[str, Any] = {"image": str(meta.get("filename_or_obj", f"case {len(self.cases)}"))}
            case.update(case_metrics(np.rint(p).astype(int), np.rint(g).astype(int), self.class_names, spacing))
            self.cases.append(case)

    def _on_completed(self, engine: Engine) -> None:
        self.summary = summarize(self.cases, list(self.class_names.values()))
        self.output_dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.output_dir / "metrics.json", json.dumps(self.summary, indent=2))
        rows = [["image", "class", *METRICS]]
        for case in self.summary["cases"]:
            for name in self.class_names.values():
                vals = case.get(name, {})
                rows.append([case["image"], name, *("" if vals.get(m) is None else f"{vals[m]:.4f}" for m in METRICS)])
        tmp = self.output_dir / ".metrics.csv.tmp"
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows(rows)
        os.replace(tmp, self.output_dir / "metrics.csv")
        logger.info("evaluation of %d case(s):\n%s", len(self.cases), format_table(self.summary))
        print(f"\n{len(self.cases)} case(s) evaluated; metrics in {self.output_dir / 'metrics.json'}\n{format_table(self.summary)}")
