#!/usr/bin/env python
"""Keep only the largest connected component of a structure? Chosen per structure on validation, as nnU-Net does.

A whole-volume answer can hold small false islands far from the structure: windows that never held it still answer
a little. ``inference.json``'s ``keep_largest`` keeps the largest 26-connected component of each label it names
(MONAI ``KeepLargestConnectedComponentd``, after the absent rule): a compact organ gains, a structure in many pieces
(cerebrospinal fluid) loses. This script rescores evaluations already written by ``configs/evaluate.json``
(``metrics.json`` and ``predictions/*_seg.nii.gz``) both ways, with the same transform and metrics code, and
chooses the rule for each structure whose Dice it raises (a structure of several data sets, the cardiac ones of acdc
and mscmr, on all their cases together), and for each data set whose mean Dice it raises. Choose on a validation
split; then score the test split with the printed ``--keep_largest`` list, or each folder with its switch (on
validation splits of a few volumes the switch per data set did better on test: docs/suite.md).

    python scripts/experiments/largest_component.py \\
        --evaluation runs/val/acdc ../shared/data/acdc --evaluation runs/val/mscmr ../shared/data/mscmr \\
        --output_file runs/val/keep_largest.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def keep_largest(label_map: np.ndarray) -> np.ndarray:
    """The label map with only the largest 26-connected component of each label (``keep_largest``'s transform).

    Args:
        label_map: integer label map ``[*S]``.

    Returns:
        The filtered label map, same shape and dtype.
    """
    import torch
    from monai.transforms import KeepLargestConnectedComponent

    # a copy: MONAI's transform works in place on a tensor that would share the caller's array
    kept = KeepLargestConnectedComponent(independent=True, connectivity=3)(torch.tensor(label_map)[None])
    return np.asarray(kept[0]).astype(label_map.dtype)


def rescore(evaluation: Path, dataset_dir: Path) -> dict[str, Any]:
    """Mean Dice per structure of one evaluation's saved predictions, as written and with ``keep_largest``.

    Args:
        evaluation: an output folder of ``configs/evaluate.json`` (``metrics.json``, ``predictions/``).
        dataset_dir: the data set it scored (its datalist gives each image's reference label map).

    Returns:
        ``{"cases", "classes": {name: [dice as written, dice kept]}, "mean": [as written, kept]}``.

    Raises:
        FileNotFoundError: naming the file, when a prediction or the metrics file is missing.
    """
    import nibabel as nib

    from bundle.data.datalist import load_msd_datalist
    from bundle.data.suite import dataset_labels
    from bundle.evaluation import case_metrics
    from bundle.transforms import output_path_for

    metrics_file = evaluation / "metrics.json"
    if not metrics_file.is_file():
        raise FileNotFoundError(f"{metrics_file}: no metrics.json (not an evaluate.json output folder)")
    cases = json.loads(metrics_file.read_text())["cases"]
    labels = {Path(item["image"]).resolve(): item["label"] for item in load_msd_datalist(dataset_dir)}
    classes = {int(k): v for k, v in dataset_labels(dataset_dir).items()}
    dice: dict[str, list[list[float]]] = {name: [[], []] for name in classes.values()}
    for case in cases:
        image = Path(case["image"]).resolve()
        prediction = output_path_for(image, evaluation / "predictions")
        if not prediction.is_file():
            raise FileNotFoundError(f"{prediction}: the saved prediction of {image} is missing")
        if image not in labels:
            raise FileNotFoundError(f"{image}: not in the datalist of {dataset_dir}")
        reference = nib.load(labels[image])
        gt = np.rint(np.asarray(reference.dataobj)).astype(np.int64)
        pred = np.rint(np.asarray(nib.load(str(prediction)).dataobj)).astype(np.int64)
        spacing = [float(s) for s in reference.header.get_zooms()[:3]]
        for i, p in enumerate((pred, keep_largest(pred))):
            scores = case_metrics(p, gt, classes, spacing)
            for name in classes.values():
                dice[name][i].append(scores[name]["dice"])
    per_class = {name: [float(np.mean(v[0])), float(np.mean(v[1]))] for name, v in dice.items()}
    mean = [float(np.mean([v[i] for v in per_class.values()])) for i in (0, 1)]
    return {"cases": len(cases), "classes": per_class, "mean": mean}


def choose(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The structures whose Dice ``keep_largest`` raises, over all the cases that hold them.

    Args:
        results: data set name -> :func:`rescore`'s output.

    Returns:
        The chosen structure names, in the order first met (``inference.json``'s ``keep_largest`` list).
    """
    gain: dict[str, float] = {}
    for r in results.values():
        for structure, (plain, kept) in r["classes"].items():
            gain[structure] = gain.get(structure, 0.0) + r["cases"] * (kept - plain)
    return [structure for structure, g in gain.items() if g > 0]


def choose_data_sets(results: Mapping[str, Mapping[str, Any]]) -> dict[str, bool]:
    """Per data set, whether ``keep_largest`` (every structure) raises its mean Dice: the coarser choice, one switch
    per folder's evaluation (``--keep_largest True`` or ``False``).

    With a validation split of a few volumes per data set, a choice per structure follows the noise of one or two
    cases; the suite model of docs/suite.md lost 1.1 points of test Dice with it against this choice (session 42).

    Args:
        results: data set name -> :func:`rescore`'s output.

    Returns:
        Data set name -> the choice.
    """
    return {name: r["mean"][1] > r["mean"][0] for name, r in results.items()}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--evaluation",
        nargs=2,
        action="append",
        required=True,
        metavar=("EVAL_DIR", "DATASET_DIR"),
        help="an evaluate.json output folder and the data set it scored (repeat for several)",
    )
    ap.add_argument("--output_file", default=None, help="write the scores and the choices as JSON")
    args = ap.parse_args(argv)
    results = {Path(d).name: rescore(Path(e), Path(d)) for e, d in args.evaluation}
    chosen, by_data_set = choose(results), choose_data_sets(results)
    print("| data set | structure | cases | Dice as written | largest component kept | difference |")
    print("|---|---|---:|---:|---:|---:|")
    for name, r in results.items():
        rows = list(r["classes"].items()) + [("**mean**", r["mean"])]
        for structure, (plain, kept) in rows:
            print(f"| {name} | {structure} | {r['cases']} | {plain:.3f} | {kept:.3f} | {100 * (kept - plain):+.1f} |")
    print(f'\nkeep_largest per structure: {json.dumps(chosen)}  (--keep_largest "{chosen!r}")')
    print("keep_largest per data set: " + ", ".join(f"{n} {c}" for n, c in by_data_set.items()))
    if args.output_file:
        report = {"results": results, "keep_largest": chosen, "keep_largest_by_data_set": by_data_set}
        Path(args.output_file).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
