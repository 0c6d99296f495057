#!/usr/bin/env python
"""The embedded demo data: the ``segone-demo-data`` command (:mod:`bundle.cli.demo_data`), kept at this path.

python scripts/make_demo_data.py --output_dir data/demo [--num_cases 24] [--seed 0]
"""

import sys

from bundle.cli.demo_data import main

if __name__ == "__main__":
    sys.exit(main())
