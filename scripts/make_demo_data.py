#!/usr/bin/env python
"""Generate the embedded demo data: synthetic MR-like phantoms with labelled structures, in MSD layout.

Each case is a seeded volume (about 38x53x38 voxels, 1 mm) with a bent, tapering tube whose head is labelled
1 "anterior hippocampus" and whose tail 2 "posterior hippocampus", on a smoothly varying background with noise and
a bias field (``bundle/demo.py``). The folder gets ``dataset.json``, ``imagesTr/`` and ``labelsTr/``; it is written
atomically and left alone when it already holds a demo data set.

    python scripts/make_demo_data.py --output_dir data/demo --num_cases 24 --seed 0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from bundle.data.demo import ensure_demo_dataset

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output_dir", default=str(ROOT / "data" / "demo"))
    ap.add_argument("--num_cases", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = ensure_demo_dataset(args.output_dir, num_cases=args.num_cases, seed=args.seed)
    print(f"demo data set: {out} ({len(list((out / 'imagesTr').glob('*.nii.gz')))} cases)")


if __name__ == "__main__":
    main()
