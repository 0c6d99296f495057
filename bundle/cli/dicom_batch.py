"""``segone-dicom-batch``: segment every image series in a tree of DICOM studies; one checked DICOM SEG per series.

Runs the bundle's inference path (configs/inference.json with configs/dicom_batch.json merged over it: same
network, checkpoint, prompts, preprocessing and sliding windows) and writes ``OUT/<study>/<series>/seg.dcm`` plus
``OUT/manifest.jsonl``. Re-running the same command resumes: series already done with the same model version are
skipped. The exit status is 1 when any series failed (the others are still processed), 0 otherwise.

    segone-dicom-batch --input_dir IN --output_dir OUT \\
        [--prompts "anterior hippocampus,posterior hippocampus"] [--modality MR] [--series_description REGEX] \\
        [--nifti] [--workers N] [--ckpt_path models/model.pt]

``python scripts/dicom_batch_infer.py`` takes the same options. The same as a bundle command:

    python -m monai.bundle run --config_file "['configs/inference.json','configs/dicom_batch.json']" \\
        --meta_file configs/metadata.json --input_dir IN --output_dir OUT
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_runner", "main"]

# bundle.utils.threads.THREAD_ENV (tests/utils/test_threads.py checks that they agree), repeated here because
# importing bundle.utils loads torch, and OpenMP reads these when torch loads
_THREAD_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}


def build_runner(overrides: Mapping[str, Any]) -> Any:
    """The batch runner of ``configs/dicom_batch.json`` merged over ``configs/inference.json``.

    Args:
        overrides: config ids and values (``ckpt_path``, ``output_dir``, ``prompts``, ...).

    Returns:
        The configured :class:`~bundle.dicom.batch.DicomBatch`.
    """
    from bundle.utils.config import load_bundle_config

    return load_bundle_config("inference.json", "dicom_batch.json", overrides=overrides).get_parsed_content("runner")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the batch and writes its summary (one JSON line) to stdout, each failed series to stderr.

    Args:
        argv: the command-line options (``None``: ``sys.argv[1:]``); ``--help`` lists them.

    Returns:
        The exit status: 1 when any series failed, 0 otherwise.

    Raises:
        SystemExit: after ``--help`` (status 0), or when the options are invalid, a ``--set`` item is not
            ``KEY=VALUE`` or ``--input_dir`` is not a folder (status 2).
    """
    if "torch" not in sys.modules:  # a fresh command: OpenMP threads sleep rather than spin (bundle.utils.threads)
        for key, value in _THREAD_ENV.items():
            os.environ.setdefault(key, value)
    from bundle.utils.cli import add_override_option

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input_dir", required=True, help="folder of DICOM studies (any nesting); only read")
    ap.add_argument("--output_dir", required=True, help="output folder (SEGs, manifest.jsonl)")
    ap.add_argument("--prompts", default=None, help="comma-separated prompts (default: every class of the model)")
    ap.add_argument("--modality", default="MR", help="Modality of the series to segment ('' for any image series)")
    ap.add_argument("--series_description", default=None, help="regular expression the SeriesDescription must match")
    ap.add_argument("--nifti", action="store_true", help="also write seg.nii.gz next to each SEG")
    ap.add_argument("--workers", type=int, default=1, help="threads reading series ahead of inference (0: none)")
    ap.add_argument("--ckpt_path", default=None, help="model file (default: the bundle's models/model.pt)")
    ap.add_argument("--no_progress", action="store_true", help="no progress bar")
    add_override_option(ap, "--set", "bundle config override, e.g. --set overlap=0.5")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("highdicom").setLevel(logging.WARNING)  # it logs every module it copies, per series

    from bundle.utils.cli import parse_overrides
    from bundle.utils.config import BUNDLE_ROOT

    if not Path(args.input_dir).is_dir():
        ap.error(f"--input_dir {args.input_dir}: no such folder")
    try:
        overrides = parse_overrides(args.set)
    except ValueError as e:
        ap.error(str(e))
    runner = build_runner(
        {
            **overrides,
            "ckpt_path": str(Path(args.ckpt_path or BUNDLE_ROOT / "models" / "model.pt").resolve()),
            "output_dir": str(Path(args.output_dir).resolve()),
            "prompts": args.prompts,
            "nifti": args.nifti,
            "workers": args.workers,
            "progress": not args.no_progress,
        }
    )
    summary = runner.run(args.input_dir, args.modality or None, args.series_description)
    for key, reason in summary.pop("failures"):
        sys.stderr.write(f"FAILED {key}: {reason}\n")
    sys.stdout.write(json.dumps(summary) + "\n")
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
