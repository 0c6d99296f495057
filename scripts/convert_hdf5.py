#!/usr/bin/env python
"""HDF5 sources to MSD folders: the ``segone-convert-hdf5`` command (:mod:`bundle.cli.convert_hdf5`), kept at this path.

python scripts/convert_hdf5.py --source acdc --input_dir IN --output_dir OUT [--block N]
"""

import sys

from bundle.cli.convert_hdf5 import main

if __name__ == "__main__":
    sys.exit(main())
