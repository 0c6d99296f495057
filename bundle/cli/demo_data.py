"""``segone-demo-data``: generate the embedded demo data: synthetic MR-like phantoms with labelled structures (MSD).

Each case is a seeded volume (about 38x53x38 voxels, 1 mm) with a bent, tapering tube whose head is labelled
1 "anterior hippocampus" and whose tail 2 "posterior hippocampus", on a smoothly varying background with noise and
a bias field (:mod:`bundle.data.demo`). The folder gets ``dataset.json``, ``imagesTr/`` and ``labelsTr/``; it is
written atomically and left alone when it already holds a demo data set.

    segone-demo-data --output_dir data/demo --num_cases 24 --seed 0
    python scripts/make_demo_data.py --output_dir data/demo    # the same
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Writes the demo data set (when the folder does not hold it yet) and reports where it is.

    Args:
        argv: the command-line options (``None``: ``sys.argv[1:]``); ``--help`` lists them.

    Returns:
        The exit status, 0.

    Raises:
        SystemExit: after ``--help`` (status 0), or when the options are invalid (status 2).
    """
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--output_dir", default=None, help="data set folder (default: the bundle's data/demo, as train.json's)"
    )
    ap.add_argument("--num_cases", type=int, default=24, help="cases to generate (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="data set seed (default: %(default)s)")
    args = ap.parse_args(argv)

    from bundle.data.demo import ensure_demo_dataset
    from bundle.utils.config import BUNDLE_ROOT

    out = ensure_demo_dataset(
        args.output_dir or BUNDLE_ROOT / "data" / "demo", num_cases=args.num_cases, seed=args.seed
    )
    sys.stdout.write(f"demo data set: {out} ({len(list((out / 'imagesTr').glob('*.nii.gz')))} cases)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
