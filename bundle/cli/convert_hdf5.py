"""``segone-convert-hdf5``: a suite data set published as HDF5 (ACDC, left atrium) to NIfTI in the MSD layout.

Reads the downloaded tree, never changes it, and writes ``dataset.json``, ``imagesTr/`` and ``labelsTr/`` into a new
folder (:func:`bundle.data.convert.convert_hdf5_dataset`). A file that cannot be converted is reported with its
problem and skipped; the exit status is then 1.

    segone-convert-hdf5 --source acdc --input_dir 3DCardiac/data/ACDC/data --output_dir data/acdc
    segone-convert-hdf5 --source left_atrium --input_dir "UA-MT/data/2018LA_Seg_Training Set" --output_dir data/left_atrium
    python scripts/convert_hdf5.py ...    # the same
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Converts one source tree and reports the cases written and those skipped.

    Args:
        argv: the command-line options (``None``: ``sys.argv[1:]``); ``--help`` lists them.

    Returns:
        The exit status: 0 when every case was converted, 1 when some were skipped or nothing could be converted.

    Raises:
        SystemExit: after ``--help`` (status 0), or when the options are invalid (status 2).
    """
    from bundle.data.convert import HDF5_SOURCES, convert_hdf5_dataset

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", required=True, choices=sorted(HDF5_SOURCES), help="which published data set")
    ap.add_argument("--input_dir", required=True, help="the downloaded HDF5 tree (read only)")
    ap.add_argument("--output_dir", required=True, help="the MSD folder to write (new or empty)")
    ap.add_argument(
        "--block",
        type=int,
        default=None,
        help="average over blocks of this many voxels per axis (default: the suite's, 2 for left_atrium, 1 for acdc)",
    )
    args = ap.parse_args(argv)
    try:
        report = convert_hdf5_dataset(args.source, args.input_dir, args.output_dir, block=args.block)
    except ValueError as e:
        sys.stderr.write(f"error: {e}\n")
        return 1
    for problem in report.failed.values():
        sys.stderr.write(f"skipped: {problem}\n")
    sys.stdout.write(
        f"{args.source}: {len(report.converted)} cases written to {report.output_dir}"
        + (f", {len(report.failed)} skipped\n" if report.failed else "\n")
    )
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
