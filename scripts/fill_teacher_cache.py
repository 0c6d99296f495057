#!/usr/bin/env python
"""Fill the SAM2 teacher cache ahead of training, with a progress bar (training fills missing entries itself).

Reads train.json (its training split, plus ``teacher#unlabelled_dir``'s cases, its loading transforms and its
``teacher`` section) and computes the teacher volume of every training case and class into ``teacher#cache_dir``;
entries already there are kept. Use the same teacher settings as the training run, or its entries will not match.

    python scripts/fill_teacher_cache.py --dataset_dir /path/to/Task04_Hippocampus \\
        --checkpoint /path/to/sam2.1_hiera_tiny.pt [--image_size 512] [--cache_dir runs/train/teacher_cache]
    # prompts from a trained SegOne's predictions, with the unlabelled cases of imagesTs
    python scripts/fill_teacher_cache.py --dataset_dir DIR --checkpoint SAM2.pt --prompt_source student \\
        --student_checkpoint models/model.pt --unlabelled_dir DIR/imagesTs --box_mode volume
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset_dir", default="", help="MSD folder (default: the demo data, as train.json)")
    ap.add_argument("--checkpoint", required=True, help="SAM2 checkpoint file")
    ap.add_argument("--config", default=None, help="sam2 package config (default: train.json's)")
    ap.add_argument("--image_size", type=int, default=None)
    ap.add_argument("--cache_dir", default=None, help="default: train.json's teacher#cache_dir")
    ap.add_argument("--output_dir", default=None, help="train.json's output_dir (locates the default cache)")
    ap.add_argument("--prompt", default=None, choices=["box", "points", "box+points"])
    ap.add_argument("--box_mode", default=None, choices=["slice", "volume"])
    ap.add_argument("--prompt_source", default=None, choices=["label", "student"])
    ap.add_argument("--student_checkpoint", default=None, help="SegOne model.pt whose predictions place the prompts")
    ap.add_argument("--unlabelled_dir", default=None, help="images without labels (needs --prompt_source student)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="any other train.json override, e.g. teacher#num_points=5 (VALUE parsed as JSON when it can be)")
    args = ap.parse_args(argv)

    from monai.bundle import ConfigParser
    from monai.transforms import Compose
    from tqdm import tqdm

    from bundle.utils.cli import parse_overrides

    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "train.json"))
    parser.read_meta(str(ROOT / "configs" / "metadata.json"))
    overrides = {"bundle_root": str(ROOT), "dataset_dir": args.dataset_dir, "teacher#checkpoint": args.checkpoint}
    for key, value in (("teacher#config", args.config), ("teacher#image_size", args.image_size),
                       ("teacher#cache_dir", args.cache_dir), ("output_dir", args.output_dir),
                       ("teacher#prompt", args.prompt), ("teacher#box_mode", args.box_mode),
                       ("teacher#prompt_source", args.prompt_source),
                       ("teacher#student_checkpoint", args.student_checkpoint),
                       ("teacher#unlabelled_dir", args.unlabelled_dir)):
        if value is not None:
            overrides[key] = value
    try:
        overrides.update(parse_overrides(args.set))
    except ValueError as e:
        ap.error(str(e))
    parser.update(overrides)
    load = Compose(parser.get_parsed_content("load_transforms"))
    targets = parser.get_parsed_content("train#random_transforms#0")  # TeacherTargetsd, first of the chain
    datalist = parser.get_parsed_content("train#datalist")
    cache = targets.cache
    start = time.perf_counter()
    # every case is loaded (the cache key includes a digest of its image and label); cached entries are only read
    for item in tqdm(datalist, unit="case", desc="SAM2 teacher"):
        targets(load(item))
    unlabelled = sum("label" not in item for item in datalist)
    print(f"{len(datalist)} training cases ({unlabelled} unlabelled) x {len(targets.class_values)} class(es): "
          f"{cache.misses} computed, {cache.hits} already cached in {cache.directory} "
          f"({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
