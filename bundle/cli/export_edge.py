"""``segone-export-edge``: the inference network as an edge artefact: fp32 and int8 ONNX graphs plus ``model.json``.

Builds the network as ``configs/inference.json`` does (by default with ``configs/edge.json`` merged over it: the
narrow edge network and ``models/edge/model.pt``), folds its prompt and timestep conditioning into tables
(:func:`bundle.export.edge.fold_prompts`), and writes to OUT, each file atomically:

- ``model.onnx``: ``image [1, 1, *S]``, ``prompts [P, K]`` (one-hot rows) -> ``probs [1, 1 + P, *S]``, fp32;
- ``model.int8.onnx``: the same graph, onnxruntime static int8 quantisation calibrated on the sliding windows of
  preprocessed training-split images (the bundle's inference preprocessing and split);
- ``model.int8-weights.onnx``: the same graph with weight-only int8 (int8 convolution weights, fp32 arithmetic:
  the same masks in every runtime; the browser page's default);
- ``model.json``: preprocessing, sliding windows, classes and prompts, file hashes (``docs/edge.md``).

    segone-export-edge --output_dir OUT [--ckpt_path CKPT] [--config_file inference.json,edge.json] \\
        [--dataset_dir DIR] [--calibration_cases 32] [--set num_inference_steps=1]
    python scripts/export_edge.py --output_dir OUT ...    # the same

It writes a one-line JSON summary to stdout; errors (missing or mismatched checkpoint, unknown config) name the
file and end with status 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_CONFIGS", "calibration_data", "main", "run_export"]

DEFAULT_CONFIGS = ("inference.json", "edge.json")


def _config_names(value: str | Sequence[str]) -> list[str]:
    """``"inference.json,edge.json"`` (or ``configs/`` paths, or a JSON list) as file names in ``configs/``."""
    from bundle.utils.config import BUNDLE_ROOT

    if isinstance(value, str):
        text = value.strip()
        items = json.loads(text.replace("'", '"')) if text.startswith("[") else text.split(",")
    else:
        items = list(value)
    names = [Path(str(item).strip()).name for item in items if str(item).strip()]
    if not names:
        raise FileNotFoundError(f"--config_file {value!r}: no config file named")
    folder = BUNDLE_ROOT / "configs"
    for name in names:
        if not (folder / name).is_file():
            known = ", ".join(sorted(p.name for p in folder.glob("*.json")))
            raise FileNotFoundError(f"{folder / name}: no such bundle config (configs/ holds {known})")
    return names


def calibration_data(parser: Any, dataset_dir: str | Path | None, cases: int) -> tuple[list[dict], list[Any]]:
    """The int8 calibration inputs: sliding windows of the first ``cases`` training-split images, preprocessed.

    The split is the bundle's seeded one with ``configs/train.json``'s settings, the preprocessing and windows are
    the inference config's (``preprocessing``, ``inferer``).

    Args:
        parser: the inference config (:func:`bundle.utils.config.load_bundle_config`).
        dataset_dir: the MSD folder; the config's ``dataset_dir`` (the demo data, generated when absent) when
            empty.
        cases: how many training cases.

    Returns:
        ``(datalist items used, float32 windows [1, C, *roi])``.

    Raises:
        FileNotFoundError: naming the folder's ``dataset.json`` or its missing files.
    """
    import torch

    from bundle.data import dataset_split
    from bundle.export.edge import calibration_windows
    from bundle.utils.config import load_bundle_config

    split = load_bundle_config("train.json")
    items = dataset_split(
        str(dataset_dir) if dataset_dir else "",
        "train",
        parser.get_parsed_content("dataset_dir"),
        float(split.get("val_fraction")),
        float(split.get("test_fraction")),
        int(split.get("split_seed")),
    )[:cases]
    preprocessing = parser.get_parsed_content("preprocessing")
    images = (torch.as_tensor(preprocessing({"image": item["image"]})["image"]).unsqueeze(0) for item in items)
    return items, calibration_windows(images, parser.get_parsed_content("inferer"))


def run_export(
    output_dir: str | Path,
    configs: str | Sequence[str] = DEFAULT_CONFIGS,
    ckpt_path: str | Path | None = None,
    dataset_dir: str | Path | None = None,
    calibration_cases: int = 32,
    overrides: dict[str, Any] | None = None,
    quantization: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Builds the network from the bundle configs, loads its weights and writes the edge export.

    Args:
        output_dir: destination folder of ``model.onnx``, ``model.int8.onnx``, ``model.int8-weights.onnx`` and
            ``model.json``.
        configs: bundle config file names in ``configs/``, merged left to right (a comma-separated string or a
            list).
        ckpt_path: the model file; the config's ``ckpt_path`` when ``None``.
        dataset_dir: MSD folder whose training split calibrates the int8 model; the config's ``dataset_dir`` (the
            demo data, generated when absent) when ``None``.
        calibration_cases: training cases used for calibration (the first of the seeded split's training part).
        overrides: further config overrides (``{"num_inference_steps": 2}``).
        quantization: arguments of :func:`bundle.export.edge.quantize_edge` over the default recipe.

    Returns:
        The manifest written to ``model.json``, with ``"parameters"`` (before and after folding) added.

    Raises:
        FileNotFoundError: naming an unknown config file or a missing data set.
        bundle.utils.checkpoint.CheckpointError: naming the checkpoint, when it is missing, unreadable or does not
            fit the configured network.
        ValueError: when ``calibration_cases < 1``, or the network takes coordinate channels (``coordinate_channels``:
            the edge runtimes' preprocessing, docs/edge.md, gives it the image alone).
    """
    import torch

    from bundle.export.edge import export_edge, fold_prompts
    from bundle.text import normalize_prompt
    from bundle.utils.checkpoint import CheckpointError, load_model_info, load_weights, model_structure_volumes
    from bundle.utils.config import load_bundle_config
    from bundle.utils.io import file_sha256

    if calibration_cases < 1:
        raise ValueError(f"calibration_cases must be >= 1, got {calibration_cases}")
    names = _config_names(configs)
    parser = load_bundle_config(*names, overrides=dict(overrides or {}))
    if parser.get_parsed_content("coordinate_channels"):
        raise ValueError(
            "coordinate_channels: the edge export's preprocessing (model.json, the browser page) gives the network "
            "the image alone, not the voxels' positions; export a model trained without coordinate channels"
        )
    ckpt = Path(ckpt_path or parser.get_parsed_content("ckpt_path")).resolve()
    segmenter = load_weights(parser.get_parsed_content("network_def"), ckpt).eval()
    class_names = parser.get_parsed_content("class_names")
    prompts = [normalize_prompt(n) for n in class_names.values()]
    try:
        encoder_config = load_model_info(ckpt)["prompt_table"].get("encoder_config", {})
    except CheckpointError:  # a bare state dict: the prompt embeddings are in it, the encoder settings unknown
        encoder_config = {}

    demo_dir = parser.get_parsed_content("dataset_dir")
    items, windows = calibration_data(parser, dataset_dir, calibration_cases)
    manifest = export_edge(
        segmenter,
        output_dir,
        prompts,
        list(class_names),
        parser.get_parsed_content("roi_size"),
        float(parser.get_parsed_content("overlap")),
        windows,
        quantization=quantization,
        extra={
            "text_encoder": dict(encoder_config),
            "checkpoint": {"file": ckpt.name, "sha256": file_sha256(ckpt)},
            "structure_volumes_ml": model_structure_volumes(ckpt),
            # the config's "absent" rule, for runtimes without the bundle's configs (the browser page)
            "absent_rule": {
                "min_answer_ml": float(parser.get_parsed_content("min_answer_ml")),
                "answer_volume_fraction": float(parser.get_parsed_content("answer_volume_fraction")),
            },
            "calibration": {
                # the folder's name: a shipped manifest says which data set, not where it sat on the build machine
                "dataset_dir": Path(dataset_dir or demo_dir).name,
                "split": "train",
                "cases": len(items),
                "windows": len(windows),
            },
        },
    )

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    return {**manifest, "parameters": {"pytorch": count(segmenter), "folded": count(fold_prompts(segmenter))}}


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the export and writes a one-line JSON summary (files, sizes, parameters) to stdout.

    Args:
        argv: the command-line options (``None``: ``sys.argv[1:]``); ``--help`` lists them.

    Returns:
        The exit status: 0, or 1 when the checkpoint, a config or the data set is missing or does not fit (the
        message, naming the file, goes to stderr).

    Raises:
        SystemExit: after ``--help`` (status 0), or when the options are invalid or a ``--set`` item is not
            ``KEY=VALUE`` (status 2).
    """
    from bundle.utils.cli import add_override_option, parse_overrides

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--output_dir",
        required=True,
        help="output folder (model.onnx, model.int8.onnx, model.int8-weights.onnx, model.json)",
    )
    ap.add_argument("--ckpt_path", default=None, help="model file (default: the config's ckpt_path)")
    ap.add_argument(
        "--config_file",
        default=",".join(DEFAULT_CONFIGS),
        help="comma-separated bundle configs in configs/, merged left to right (default: %(default)s)",
    )
    ap.add_argument(
        "--dataset_dir", default=None, help="MSD folder whose training split calibrates int8 (default: the config's)"
    )
    ap.add_argument("--calibration_cases", type=int, default=32, help="calibration cases (default: %(default)s)")
    add_override_option(ap, "--set", "bundle config override, e.g. --set num_inference_steps=2")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        overrides = parse_overrides(args.set)
    except ValueError as e:
        ap.error(str(e))
    if args.calibration_cases < 1:
        ap.error(f"--calibration_cases must be >= 1, got {args.calibration_cases}")

    from bundle.utils.checkpoint import CheckpointError

    try:
        manifest = run_export(
            args.output_dir, args.config_file, args.ckpt_path, args.dataset_dir, args.calibration_cases, overrides
        )
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        sys.stderr.write(f"error: {e}\n")
        return 1
    summary = {
        "output_dir": str(Path(args.output_dir).resolve()),
        "files": {kind: {k: m[k] for k in ("file", "bytes")} for kind, m in manifest["models"].items()},
        "parameters": manifest["parameters"],
        "prompts": manifest["prompts"],
        "checks": manifest.get("checks", {}),
        "calibration": manifest["calibration"],
    }
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
