#!/usr/bin/env python
"""Segment every image series in a tree of DICOM studies and write one checked DICOM SEG per series.

Runs the bundle's inference path (configs/inference.json with configs/dicom_batch.json merged over it: same
network, checkpoint, prompts, preprocessing and sliding windows) and writes ``OUT/<study>/<series>/seg.dcm`` plus
``OUT/manifest.jsonl``. Re-running the same command resumes: series already done with the same model version are
skipped. The exit status is 1 when any series failed (the others are still processed), 0 otherwise.

    python scripts/dicom_batch_infer.py --input IN --output OUT \\
        [--prompts "anterior hippocampus,posterior hippocampus"] [--modality MR] [--series-description REGEX] \\
        [--nifti] [--workers N] [--ckpt models/model.pt]

The same as a bundle command:

    python -m monai.bundle run --config_file "['configs/inference.json','configs/dicom_batch.json']" \\
        --meta_file configs/metadata.json --input_dir IN --output_dir OUT
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_runner(overrides: dict):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(ROOT / "configs" / "inference.json"), str(ROOT / "configs" / "dicom_batch.json")])
    parser.read_meta(str(ROOT / "configs" / "metadata.json"))
    parser.update({"bundle_root": str(ROOT), **overrides})
    return parser.get_parsed_content("runner")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", required=True, help="folder of DICOM studies (any nesting); only read")
    ap.add_argument("--output", required=True, help="output folder (SEGs, manifest.jsonl)")
    ap.add_argument("--prompts", default=None, help="comma-separated prompts (default: every class of the model)")
    ap.add_argument("--modality", default="MR", help="Modality of the series to segment ('' for any image series)")
    ap.add_argument("--series-description", default=None, help="regular expression the SeriesDescription must match")
    ap.add_argument("--nifti", action="store_true", help="also write seg.nii.gz next to each SEG")
    ap.add_argument("--workers", type=int, default=1, help="threads reading series ahead of inference (0: none)")
    ap.add_argument("--ckpt", default=str(ROOT / "models" / "model.pt"), help="model file")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="bundle config override (VALUE parsed as JSON when it is JSON), e.g. --set overlap=0.5")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("highdicom").setLevel(logging.WARNING)  # it logs every module it copies, per series

    from bundle.utils.cli import parse_overrides

    if not Path(args.input).is_dir():
        ap.error(f"--input {args.input}: no such folder")
    overrides = {}
    try:
        overrides.update(parse_overrides(args.set))
    except ValueError as e:
        ap.error(str(e))
    runner = build_runner({
        **overrides,
        "ckpt_path": str(Path(args.ckpt).resolve()),
        "output_dir": str(Path(args.output).resolve()),
        "prompts": args.prompts,
        "nifti": args.nifti,
        "workers": args.workers,
        "progress": not args.no_progress,
    })
    summary = runner.run(args.input, args.modality or None, args.series_description)
    for key, reason in summary.pop("failures"):
        print(f"FAILED {key}: {reason}", file=sys.stderr)
    print(json.dumps(summary))
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
