#!/usr/bin/env python
"""DICOM batch inference: the ``segone-dicom-batch`` command (:mod:`bundle.cli.dicom_batch`), kept at this path.

python scripts/dicom_batch_infer.py --input_dir IN --output_dir OUT [--series_description REGEX] [--nifti]
"""

import sys

from bundle.cli.dicom_batch import main

if __name__ == "__main__":
    sys.exit(main())
