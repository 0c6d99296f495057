"""``segone-fill-teacher-cache``: fill the SAM2 teacher cache ahead of training, with a progress bar (training
fills missing entries itself).

Reads train.json (its training split, plus ``teacher_training#unlabelled_dir``'s cases, its loading transforms and
its ``teacher`` and ``teacher_training`` sections) and computes the teacher volume of every training case and class
into ``teacher_training#cache_dir``; entries already there are kept. Use the same teacher settings as the training
run, or its entries will not match.

    segone-fill-teacher-cache --dataset_dir /path/to/Task04_Hippocampus \\
        --sam2_checkpoint /path/to/sam2.1_hiera_tiny.pt [--image_size 512] [--cache_dir runs/train/teacher_cache]
    # prompts from a trained SegOne's predictions, with the unlabelled cases of imagesTs
    segone-fill-teacher-cache --dataset_dir DIR --sam2_checkpoint SAM2.pt --prompt_source student \\
        --student_checkpoint models/model.pt --unlabelled_dir DIR/imagesTs --box_mode volume

``python scripts/fill_teacher_cache.py`` takes the same options.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Computes the missing teacher-cache entries of train.json's training cases and writes a summary to stdout.

    Args:
        argv: the command-line options (``None``: ``sys.argv[1:]``); ``--help`` lists them.

    Returns:
        The exit status, 0.

    Raises:
        SystemExit: after ``--help`` (status 0), or when the options are invalid or a ``--set`` item is not
            ``KEY=VALUE`` (status 2).
    """
    from bundle.utils.cli import add_override_option

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset_dir", default="", help="MSD folder (default: the demo data, as train.json)")
    ap.add_argument("--sam2_checkpoint", required=True, help="SAM2 checkpoint file (teacher#checkpoint)")
    ap.add_argument("--sam2_config", default=None, help="sam2 package config (teacher#config; default: train.json's)")
    ap.add_argument("--image_size", type=int, default=None, help="SAM2 image size (teacher#image_size)")
    ap.add_argument("--cache_dir", default=None, help="default: train.json's teacher_training#cache_dir")
    ap.add_argument("--output_dir", default=None, help="train.json's output_dir (locates the default cache)")
    ap.add_argument("--prompt", default=None, choices=["box", "points", "box+points"], help="teacher#prompt")
    ap.add_argument("--box_mode", default=None, choices=["slice", "volume"], help="teacher#box_mode")
    ap.add_argument(
        "--prompt_source", default=None, choices=["label", "student"], help="teacher_training#prompt_source"
    )
    ap.add_argument(
        "--student_checkpoint",
        default=None,
        help="SegOne model.pt whose predictions place the prompts (teacher_training#student_checkpoint)",
    )
    ap.add_argument(
        "--unlabelled_dir",
        default=None,
        help="images without labels (teacher_training#unlabelled_dir; needs --prompt_source student)",
    )
    add_override_option(ap, "--set", "any other train.json override, e.g. teacher#num_points=5")
    args = ap.parse_args(argv)

    from monai.transforms import Compose
    from tqdm import tqdm

    from bundle.utils.cli import parse_overrides
    from bundle.utils.config import load_bundle_config

    overrides = {"dataset_dir": args.dataset_dir, "teacher#checkpoint": args.sam2_checkpoint}
    for key, value in (
        ("teacher#config", args.sam2_config),
        ("teacher#image_size", args.image_size),
        ("teacher_training#cache_dir", args.cache_dir),
        ("output_dir", args.output_dir),
        ("teacher#prompt", args.prompt),
        ("teacher#box_mode", args.box_mode),
        ("teacher_training#prompt_source", args.prompt_source),
        ("teacher_training#student_checkpoint", args.student_checkpoint),
        ("teacher_training#unlabelled_dir", args.unlabelled_dir),
    ):
        if value is not None:
            overrides[key] = value
    try:
        overrides.update(parse_overrides(args.set))
    except ValueError as e:
        ap.error(str(e))
    parser = load_bundle_config("train.json", overrides=overrides)
    load = Compose(parser.get_parsed_content("load_transforms"))
    targets = parser.get_parsed_content("train#random_transforms#0")  # TeacherTargetsd, first of the chain
    datalist = parser.get_parsed_content("train#datalist")
    cache = targets.cache
    start = time.perf_counter()
    # every case is loaded (the cache key includes a digest of its image and label); cached entries are only read
    for item in tqdm(datalist, unit="case", desc="SAM2 teacher"):
        targets(load(item))
    unlabelled = sum("label" not in item for item in datalist)
    sys.stdout.write(
        f"{len(datalist)} training cases ({unlabelled} unlabelled) x {len(targets.class_values)} class(es): "
        f"{cache.misses} computed, {cache.hits} already cached in {cache.directory} "
        f"({time.perf_counter() - start:.1f} s)\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
