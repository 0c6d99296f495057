"""MetricsReport: scores every case of an evaluation run and writes metrics.json and metrics.csv."""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from bundle.evaluation.metrics import CASE_VOLUMES, METRICS, case_metrics, format_table, summarize
from bundle.utils.io import atomic_path, write_text_atomic

__all__ = ["MetricsReport"]

logger = logging.getLogger(__name__)


class MetricsReport:
    """Scores every evaluated case and writes ``metrics.json``, ``metrics.csv`` and a summary to the log.

    Args:
        output_dir: where the files go.
        class_names: ``{label value: name}`` scored (background excluded).
        pred_key, label_key: keys of the predicted and ground-truth label maps (``[1, *S]``, same grid) in the
            engine output after postprocessing.
        image_key: the image in the engine output, whose file names the case.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        class_names: Mapping[int, str],
        pred_key: str = "pred",
        label_key: str = "label",
        image_key: str = "image",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.class_names = {int(k): str(v) for k, v in class_names.items()}
        self.pred_key, self.label_key, self.image_key = pred_key, label_key, image_key
        self.cases: list[dict[str, Any]] = []
        self.summary: dict[str, Any] | None = None

    def attach(self, engine: Engine) -> None:
        """Registers the handler on an engine.

        Args:
            engine: the evaluator.
        """
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
            # the image's file names the case (the label's when the output has no image)
            meta = getattr(out.get(self.image_key, label), "meta", {}) or getattr(label, "meta", {}) or {}
            case: dict[str, Any] = {"image": str(meta.get("filename_or_obj", f"case {len(self.cases)}"))}
            case.update(case_metrics(np.rint(p).astype(int), np.rint(g).astype(int), self.class_names, spacing))
            self.cases.append(case)

    def _on_completed(self, engine: Engine) -> None:
        self.summary = summarize(self.cases, list(self.class_names.values()))
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.output_dir / "metrics.json", json.dumps(self.summary, indent=2))
        columns = (*METRICS, *CASE_VOLUMES)
        rows = [["image", "class", *columns]]
        for case in self.summary["cases"]:
            for name in self.class_names.values():
                vals = case.get(name, {})
                rows.append([case["image"], name, *("" if vals.get(m) is None else f"{vals[m]:.4f}" for m in columns)])
        with atomic_path(self.output_dir / "metrics.csv") as tmp, open(tmp, "w", newline="") as f:
            csv.writer(f).writerows(rows)
        logger.info(
            "%d case(s) evaluated; metrics in %s\n%s",
            len(self.cases),
            self.output_dir / "metrics.json",
            format_table(self.summary),
        )
