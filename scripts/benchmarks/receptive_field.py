#!/usr/bin/env python
"""How much of the input does one SegOne output voxel see? Prints a markdown table per variant.

The support of an output voxel is the set of input voxels with a non-zero gradient (see
``bundle.networks.receptive_field``). Networks use eval-mode BatchNorm here, because InstanceNorm's statistics span
the whole patch and would make every variant look global. Zero-initialised branches get random weights.

    python scripts/benchmarks/receptive_field.py
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from bundle.networks import SegOne
from bundle.networks.receptive_field import activate_zero_init, input_support

VARIANTS = {
    "aligned unshuffle pyramid only": {"spatial_shift": False, "global_context": False},
    "+ spatial shifts": {"global_context": False},
    "+ global context only": {"spatial_shift": False},
    "shifts + global context (default)": {},
}
CASES = {
    "3D 48x64x48": ((48, 64, 48), {"corner (0,0,0)": (0, 0, 0), "centre (24,32,24)": (24, 32, 24)}),
    "2D 256x256": ((256, 256), {"corner (0,0)": (0, 0), "centre (128,128)": (128, 128)}),
}


def extent(support: torch.Tensor) -> str:
    """The bounding box of a support mask.

    Args:
        support: a boolean mask of the input.

    Returns:
        Its extent per dimension, ``"AxBxC"``.
    """
    idx = support.nonzero()
    return "x".join(str(int(idx[:, d].max() - idx[:, d].min() + 1)) for d in range(support.dim()))


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    torch.set_num_threads(2)
    print("| input | variant | output voxel | input voxels seen | bounding box |")
    print("|---|---|---|---|---|")
    for case, (shape, points) in CASES.items():
        for name, kwargs in VARIANTS.items():
            torch.manual_seed(0)
            net = activate_zero_init(SegOne(len(shape), 1, 1, norm="batch", **kwargs))
            for label, point in points.items():
                support = input_support(net, shape, point)
                print(f"| {case} | {name} | {label} | {100 * support.float().mean():.1f} % | {extent(support)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
