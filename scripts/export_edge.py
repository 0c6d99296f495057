#!/usr/bin/env python
"""The edge export: the ``segone-export-edge`` command (:mod:`bundle.cli.export_edge`), kept at this path.

python scripts/export_edge.py --output_dir OUT [--ckpt_path CKPT] [--config_file inference.json,edge.json]
    [--dataset_dir DIR] [--calibration_cases N] [--set KEY=VALUE]
"""

import sys

from bundle.cli.export_edge import main

if __name__ == "__main__":
    sys.exit(main())
