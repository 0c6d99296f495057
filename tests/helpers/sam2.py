"""SAM2 settings of the teacher tests."""

from __future__ import annotations

__all__ = ["CONFIG", "SIZE"]

# the sam2 package's own config of SAM2.1 tiny
CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
# SAM2 runs at any multiple of 16; 128 keeps the suite quick (real use: 256/512/1024)
SIZE = 128
