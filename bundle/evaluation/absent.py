"""Absent structures: each evaluated image is asked, one prompt at a time, for structures it does not contain.

A text-prompted segmenter answers every prompt; the common failure of such models is a confident mask for a
structure that is not there ("liver" on a brain MRI). :class:`AbsentPromptsReport` measures it: for every image and
every absent prompt, the volume of the answer, written to ``absent_prompts.json`` with, for a range of "absent" rules
(an answer of at most ``T`` ml counts as empty), the fraction of empty answers and the false-positive volume.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from bundle.data.suite import structure_region
from bundle.inference.engines import FAILED_KEY, prompted_inference
from bundle.text import PromptEmbeddingTable, normalize_prompt
from bundle.transforms.absent import voxel_volume_ml
from bundle.utils.io import write_text_atomic

__all__ = ["AbsentPromptsReport", "absent_prompt_names", "DEFAULT_THRESHOLDS_ML"]

logger = logging.getLogger(__name__)

# answers of at most this many ml counted as empty: 0 is the strict rule; the others are candidate "absent" rules
DEFAULT_THRESHOLDS_ML = (0.0, 0.1, 0.5, 1.0, 5.0)


def absent_prompt_names(
    absent_prompts: str | Sequence[str] | None, model_classes: Mapping[int, str], evaluated_classes: Mapping[int, str]
) -> list[str]:
    """The prompts to ask every image for: a list of names; ``"others"``: every class of the model that the
    evaluated data set does not label; or ``"other_regions"``: those of them from another body region than every
    structure of the data set (:func:`~bundle.data.structure_region`; an unlisted structure counts as another
    region), the prompts whose structure cannot be in its images (``white matter`` is in a hippocampus crop).

    Args:
        absent_prompts: ``None``/empty (none), ``"others"``, ``"other_regions"``, or prompt names (a list, or one
            comma-separated string).
        model_classes: the model's classes (``channel_def``).
        evaluated_classes: the evaluated data set's classes.

    Returns:
        Normalised, de-duplicated names, none of them a class of the evaluated data set.

    Raises:
        ValueError: a requested name is a class of the evaluated data set (it is present, not absent).
    """
    if not absent_prompts:
        return []
    present = {normalize_prompt(n) for n in evaluated_classes.values()}
    keyword = absent_prompts.strip().lower() if isinstance(absent_prompts, str) else None
    if keyword in ("others", "other_regions"):
        others = [n for n in dict.fromkeys(normalize_prompt(v) for v in model_classes.values()) if n not in present]
        if keyword == "others":
            return others
        regions = {structure_region(n) for n in present} - {None}
        return [n for n in others if structure_region(n) is None or structure_region(n) not in regions]
    if isinstance(absent_prompts, str):
        absent_prompts = [p for p in absent_prompts.split(",") if p.strip()]
    names = list(dict.fromkeys(normalize_prompt(p) for p in absent_prompts))
    labelled = [n for n in names if n in present]
    if labelled:
        raise ValueError(f"absent_prompts {labelled} are classes of the evaluated data set, not absent structures")
    return names


class AbsentPromptsReport:
    """Handler: every image of an evaluation is segmented for each absent prompt alone; answers are measured in ml.

    Each prompt runs on its own (``[1, E]`` embeddings), as a user asking for one structure would, so absent prompts
    never compete with each other or with the present classes. The voxel volume comes from the preprocessed image's
    affine (the bundle's preprocessing reorients and never resamples).

    ``absent_prompts.json`` holds ``{"prompts", "thresholds_ml", "summary", "per_prompt", "cases"}``: per threshold
    ``T``, the fraction of (image, prompt) answers of at most ``T`` ml (counted empty under the rule "an answer of at
    most ``T`` ml is absent") and the mean volume of the others; per prompt the same; per case the volumes. With
    ``rule_ml`` (the thresholds the evaluation's own postprocessing applies, one per prompt), ``summary`` and
    ``per_prompt`` also hold ``"rule"``: the same figures under that rule, and ``rule_ml`` is written too.

    Args:
        output_dir: where ``absent_prompts.json`` goes.
        prompts: the absent prompts (:func:`absent_prompt_names`); none: the handler does nothing.
        table: the prompt table, or a callable returning it (called once, when attached: an unknown prompt fails
            before the first image).
        inferer: the evaluation's inferer (sliding windows).
        thresholds_ml: the "absent" rules compared (ml; 0 is the strict one).
        rule_ml: ``{prompt: threshold in ml}``, the rule in use (:func:`~bundle.transforms.answer_thresholds_ml`);
            ``None``: not reported.
        image_key: the image entry of the batch.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        prompts: Sequence[str],
        table: PromptEmbeddingTable | Callable[[], PromptEmbeddingTable],
        inferer: Callable[..., torch.Tensor],
        thresholds_ml: Sequence[float] = DEFAULT_THRESHOLDS_ML,
        rule_ml: Mapping[str, float] | None = None,
        image_key: str = "image",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.prompts = [normalize_prompt(p) for p in prompts]
        self._table = table
        self._embeddings: torch.Tensor | None = None
        self.inferer = inferer
        self.thresholds_ml = sorted(float(t) for t in thresholds_ml)
        self.rule_ml = {normalize_prompt(k): float(v) for k, v in rule_ml.items()} if rule_ml is not None else None
        self.image_key = image_key
        self.cases: list[dict[str, Any]] = []
        self.summary: dict[str, Any] | None = None

    def attach(self, engine: Engine) -> None:
        """Registers the handler on an evaluator (a :class:`~bundle.inference.FolderEvaluator`).

        Args:
            engine: the evaluator.
        """
        if not self.prompts:
            return
        self.embeddings()  # an unknown prompt fails here, before the first image
        engine.add_event_handler(Events.STARTED, lambda _: self.cases.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._on_iteration)
        engine.add_event_handler(Events.COMPLETED, self._on_completed)

    def embeddings(self) -> torch.Tensor:
        """``[K, E]`` embeddings of the absent prompts (from the table, looked up once)."""
        if self._embeddings is None:
            table = self._table if isinstance(self._table, PromptEmbeddingTable) else self._table()
            self._embeddings = table(self.prompts)
        return self._embeddings

    def _on_iteration(self, engine: Engine) -> None:
        # MONAI decollates the batch after the iteration: a list of items, images [C, *S]; else one collated batch
        batch = engine.state.batch
        items = batch if isinstance(batch, list) else [batch]
        for item in items:
            if not isinstance(item, Mapping) or FAILED_KEY in item or self.image_key not in item:
                continue  # a file that failed is reported by the evaluator
            image = item[self.image_key]
            self.cases.append(self._ask(engine, image if isinstance(batch, list) else image[0]))

    def _ask(self, engine: Engine, image: torch.Tensor) -> dict[str, Any]:
        if getattr(image, "affine", None) is None:
            raise ValueError("absent prompts need the image's affine to measure volumes in ml")
        voxel_ml = voxel_volume_ml(image, image.dim() - 1)
        name = getattr(image, "meta", {}).get("filename_or_obj", "?")
        name = name[0] if isinstance(name, (list, tuple)) else name
        device = getattr(engine.state, "device", None) or torch.device("cpu")
        x = torch.as_tensor(image)[None].to(device)
        volumes = {}
        for prompt, emb in zip(self.prompts, self.embeddings()):
            probs = prompted_inference(self.inferer, engine.network, x, emb[None])
            volumes[prompt] = int((probs.argmax(dim=1) > 0).sum()) * voxel_ml
        return {"image": str(name), "volumes_ml": volumes}

    def _rates(self, volumes: np.ndarray) -> dict[str, dict[str, float]]:
        out = {}
        for t in self.thresholds_ml:
            kept = volumes[volumes > t]
            out[f"{t:g}"] = {
                "empty_fraction": float(np.mean(volumes <= t)) if volumes.size else float("nan"),
                "mean_false_positive_ml": float(kept.mean()) if kept.size else 0.0,
            }
        return out

    def _rule_rates(self, volumes: np.ndarray, thresholds: np.ndarray) -> dict[str, float]:
        absent = volumes <= thresholds
        kept = volumes[~absent]
        return {
            "empty_fraction": float(np.mean(absent)) if volumes.size else float("nan"),
            "mean_false_positive_ml": float(kept.mean()) if kept.size else 0.0,
        }

    def _on_completed(self, engine: Engine) -> None:
        per_prompt = {
            p: self._rates(np.array([c["volumes_ml"][p] for c in self.cases], dtype=np.float64)) for p in self.prompts
        }
        everything = np.array([c["volumes_ml"][p] for c in self.cases for p in self.prompts], dtype=np.float64)
        self.summary = self._rates(everything)
        if self.rule_ml is not None:
            rule = np.array([self.rule_ml.get(p, 0.0) for _ in self.cases for p in self.prompts], dtype=np.float64)
            self.summary["rule"] = self._rule_rates(everything, rule)
            for p in self.prompts:
                volumes = np.array([c["volumes_ml"][p] for c in self.cases], dtype=np.float64)
                per_prompt[p]["rule"] = self._rule_rates(volumes, np.full(volumes.shape, self.rule_ml.get(p, 0.0)))
        report = {
            "prompts": self.prompts,
            "thresholds_ml": self.thresholds_ml,
            "num_answers": int(everything.size),
            "summary": self.summary,
            "per_prompt": per_prompt,
            "cases": self.cases,
        }
        if self.rule_ml is not None:
            report["rule_ml"] = {p: self.rule_ml.get(p, 0.0) for p in self.prompts}
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.output_dir / "absent_prompts.json", json.dumps(report, indent=2))
        if self.rule_ml is not None:
            logger.info(
                "absent prompts under the rule in use: empty %.1f %%, mean false-positive volume %.2f ml",
                100 * self.summary["rule"]["empty_fraction"],
                self.summary["rule"]["mean_false_positive_ml"],
            )
        strict = self.summary[f"{self.thresholds_ml[0]:g}"]
        logger.info(
            "absent prompts: %d answers (%d images x %d prompts); empty %.1f %% (answers <= %g ml), "
            "mean false-positive volume %.2f ml",
            everything.size,
            len(self.cases),
            len(self.prompts),
            100 * strict["empty_fraction"],
            self.thresholds_ml[0],
            strict["mean_false_positive_ml"],
        )
