#!/usr/bin/env python
"""The SAM2 teacher cache: the ``segone-fill-teacher-cache`` command (:mod:`bundle.cli.fill_teacher_cache`), kept at
this path.

    python scripts/fill_teacher_cache.py --dataset_dir DIR --sam2_checkpoint SAM2.pt [--image_size 512]
"""

import sys

from bundle.cli.fill_teacher_cache import main

if __name__ == "__main__":
    sys.exit(main())
