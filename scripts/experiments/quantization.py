#!/usr/bin/env python
"""int8 recipes for the edge export: file size and accuracy of QDQ against QOperator, per-channel against per-tensor.

Exports the network once (``segone-export-edge``: folded prompts, fp32 ONNX, calibration windows from the training
split), quantises the fp32 graph with each recipe (onnxruntime static quantisation, min-max calibration on the same
windows), runs every graph through the bundle's evaluation preprocessing and sliding windows
(:class:`bundle.inference.OnnxSegmenter`) on a split of an MSD folder, and prints a markdown table: file size, the
largest probability difference from the fp32 graph, Dice of the int8 labels against the fp32 labels, Dice against
the reference labels (mean of the classes, on the RAS-oriented volumes as ``configs/evaluate.json`` scores them)
and the median time per volume on this machine. The default recipe of ``bundle.export.edge.QUANTIZATION`` is the
one this table chose (``docs/edge.md``), on the validation split: the test split only reports the chosen recipe
(``configs/evaluate.json --onnx_path``), it never chooses one.

    python scripts/experiments/quantization.py --dataset_dir ../shared/data/hippocampus \\
        [--ckpt_path models/edge/model.pt] [--config_file inference.json,edge.json] [--eval_split val]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

# name, quantize_edge arguments
RECIPES: list[tuple[str, dict[str, Any]]] = [
    ("QDQ, per-channel, Conv/MatMul/Gemm", {"quant_format": "QDQ", "per_channel": True}),
    ("QDQ, per-tensor, Conv/MatMul/Gemm", {"quant_format": "QDQ", "per_channel": False}),
    ("QOperator, per-channel, Conv/MatMul/Gemm", {"quant_format": "QOperator", "per_channel": True}),
    ("QOperator, per-tensor, Conv/MatMul/Gemm", {"quant_format": "QOperator", "per_channel": False}),
    ("QDQ, per-channel, every operator type", {"quant_format": "QDQ", "per_channel": True, "op_types": None}),
]


def _dice(a: np.ndarray, b: np.ndarray, classes: int) -> float:
    """Mean Dice over labels ``1..classes`` of two label maps (a class absent from both counts as 1)."""
    scores = []
    for c in range(1, classes + 1):
        x, y = a == c, b == c
        total = x.sum() + y.sum()
        scores.append(1.0 if total == 0 else 2.0 * np.logical_and(x, y).sum() / total)
    return float(np.mean(scores))


def score(
    models: dict[str, Path], preprocessing: Any, inferer: Any, items: list[dict], threads: int
) -> dict[str, dict[str, float]]:
    """Every graph on every case: probabilities and labels against the fp32 graph's, Dice against the labels, time.

    Args:
        models: ``{name: .onnx path}``, ``"fp32"`` among them, all beside one ``model.json``.
        preprocessing: the evaluation preprocessing (image and label, ``configs/evaluate.json``).
        inferer: the sliding-window inferer.
        items: the datalist of the split scored.
        threads: onnxruntime threads.

    Returns:
        ``{name: {"max_prob_diff", "dice_vs_fp32", "dice", "ms_per_volume"}}``.
    """
    from bundle.inference import OnnxSegmenter, prompted_inference

    nets = {
        name: OnnxSegmenter(path, intra_op_num_threads=threads, allow_spinning=False) for name, path in models.items()
    }
    classes = len(nets["fp32"].prompts)
    rows: dict[str, dict[str, list[float]]] = {n: {"diff": [], "agree": [], "dice": [], "ms": []} for n in nets}
    for item in items:
        data = preprocessing(dict(item))
        image = torch.as_tensor(data["image"]).unsqueeze(0)
        label = np.asarray(data["label"])[0]
        outputs = {}
        for name, net in nets.items():
            start = time.perf_counter()
            outputs[name] = prompted_inference(inferer, net, image)[0].numpy()
            rows[name]["ms"].append(1000 * (time.perf_counter() - start))
        reference = outputs["fp32"]
        for name, probs in outputs.items():
            labels = probs.argmax(0)
            rows[name]["diff"].append(float(np.abs(probs - reference).max()))
            rows[name]["agree"].append(_dice(labels, reference.argmax(0), classes))
            rows[name]["dice"].append(_dice(labels, label, classes))
    return {
        name: {
            "max_prob_diff": max(r["diff"]),
            "dice_vs_fp32": float(np.mean(r["agree"])),
            "dice": float(np.mean(r["dice"])),
            "ms_per_volume": float(np.median(r["ms"])),
        }
        for name, r in rows.items()
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the study and prints the table (and writes it as JSON with ``--output_file``).

    Args:
        argv: the command-line options (``None``: ``sys.argv[1:]``).

    Returns:
        The exit status, 0.
    """
    from bundle.cli.export_edge import DEFAULT_CONFIGS, _config_names, calibration_data, run_export
    from bundle.data import dataset_split
    from bundle.export.edge import FP32_FILE, quantize_edge, quantize_weights
    from bundle.utils.config import load_bundle_config

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset_dir", required=True, help="MSD folder (calibration: train split; scoring: --eval_split)")
    ap.add_argument("--ckpt_path", default=None, help="model file (default: the config's)")
    ap.add_argument("--config_file", default=",".join(DEFAULT_CONFIGS), help="bundle configs (default: %(default)s)")
    ap.add_argument("--eval_split", default="val", help="the split scored (default: %(default)s)")
    ap.add_argument("--calibration_cases", type=int, default=32, help="calibration cases (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime threads (default: %(default)s)")
    ap.add_argument("--output_dir", default=None, help="keep the graphs here (default: a temporary folder)")
    ap.add_argument("--output_file", default=None, help="also write the results here (JSON)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.output_dir or tmp)
        manifest = run_export(out, args.config_file, args.ckpt_path, args.dataset_dir, args.calibration_cases)
        parser = load_bundle_config(*_config_names(args.config_file))
        _, windows = calibration_data(parser, args.dataset_dir, args.calibration_cases)
        num_prompts = len(manifest["prompts"])
        models = {"fp32": out / FP32_FILE}
        for i, (name, recipe) in enumerate(RECIPES):
            models[name] = quantize_edge(out / FP32_FILE, out / f"variant{i}.onnx", windows, num_prompts, **recipe)
        models["weight-only, per-channel, Conv (no calibration)"] = quantize_weights(
            out / FP32_FILE, out / "weights.onnx"
        )
        split = load_bundle_config("train.json")
        items = dataset_split(
            args.dataset_dir,
            args.eval_split,
            None,
            float(split.get("val_fraction")),
            float(split.get("test_fraction")),
            int(split.get("split_seed")),
        )
        preprocessing = load_bundle_config("evaluate.json").get_parsed_content("preprocessing")
        results = score(models, preprocessing, parser.get_parsed_content("inferer"), items, args.threads)
        sizes = {name: path.stat().st_size for name, path in models.items()}

    lines = [
        f"{args.eval_split} split of {args.dataset_dir}, {len(items)} cases; calibration: {len(windows)} windows of "
        f"{args.calibration_cases} training cases; parameters {manifest['parameters']}",
        "",
        "| model | file bytes | max prob. diff. vs fp32 | Dice vs fp32 labels | Dice vs reference | ms/volume |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {sizes[name]:,} | {r['max_prob_diff']:.3f} | {r['dice_vs_fp32']:.4f} | {r['dice']:.4f} | "
            f"{r['ms_per_volume']:.0f} |"
        )
    sys.stdout.write("\n".join(lines) + "\n")
    if args.output_file:
        Path(args.output_file).write_text(json.dumps({"sizes": sizes, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
