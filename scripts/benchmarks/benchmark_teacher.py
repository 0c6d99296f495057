#!/usr/bin/env python
"""What the SAM2 teacher costs on this machine, and how well a student's prompts stand in for the labels'.

Prints three markdown tables:

1. SAM2 seconds per prompted slice by image size and prompt kind (box, points, box+points).
2. Per case and class: prompted slices, SAM2 time with a cold cache, the cache entry's size and the time of a warm
   read, with prompts from the label, from the student's per-slice boxes and from the student's 3D box; and both
   classes together, as training computes them (one image encoding per slice).
3. With ``--dataset_dir`` (an MSD folder): on the held-out split, how the released SegOne's own masks (the student
   of ``prompt_source="student"``, ``--student_checkpoint``) compare with the ground truth as SAM2 prompts: the IoU
   of the per-slice boxes, and the label's slices the student misses or adds. This needs no SAM2 weights.

Costs do not depend on SAM2's weights, so without ``--sam2_checkpoint`` a randomly initialised SAM2.1 tiny is built
from the ``sam2`` package config and timed; its masks are meaningless and no accuracy is reported from them.

    python scripts/benchmarks/benchmark_teacher.py [--dataset_dir /path/to/Task04_Hippocampus] \
        [--sizes 256 512 1024] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from bundle.utils.config import BUNDLE_ROOT, load_bundle_config

CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"


def random_sam2(path: Path) -> Path:
    """Writes a randomly initialised SAM2.1 tiny (seed 0) as a checkpoint file.

    Args:
        path: the file to write.

    Returns:
        ``path``.
    """
    from sam2.build_sam import build_sam2

    torch.manual_seed(0)
    torch.save({"model": build_sam2(CONFIG, None, device="cpu").state_dict()}, path)
    return path


def load_cases(dataset_dir: str, split: str, limit: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Cases of a split through train.json's loading transforms (RAS, normalised).

    Args:
        dataset_dir: an MSD folder (``""``: the demo data).
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"``.
        limit: the most cases returned.

    Returns:
        ``[(name, image [X, Y, Z], label [X, Y, Z])]``.
    """
    from monai.transforms import Compose

    parser = load_bundle_config("train.json", overrides={"dataset_dir": dataset_dir})
    load = Compose(parser.get_parsed_content("load_transforms"))
    from bundle.data import dataset_split

    items = dataset_split(dataset_dir or None, split, str(BUNDLE_ROOT / "data" / "demo"))[:limit]
    cases = []
    for item in items:
        d = load(item)
        cases.append((Path(item["image"]).name, d["image"][0].numpy(), d["label"][0].numpy()))
    return cases


def boxes(mask: np.ndarray, axis: int = 2) -> dict[int, tuple[int, int, int, int]]:
    """A 3D mask's per-slice bounding boxes.

    Args:
        mask: ``[X, Y, Z]``.
        axis: the slice axis.

    Returns:
        ``{slice: (r0, c0, r1, c1)}`` for the slices where the mask is not empty.
    """
    m = np.moveaxis(mask, axis, 0)
    out = {}
    for k in np.nonzero(m.any(axis=(1, 2)))[0]:
        r, c = np.nonzero(m[k])
        out[int(k)] = (r.min(), c.min(), r.max(), c.max())
    return out


def box_iou(a: Sequence[int], b: Sequence[int]) -> float:
    """The intersection over union of two boxes.

    Args:
        a: ``(r0, c0, r1, c1)``, inclusive.
        b: the same.

    Returns:
        The IoU.
    """
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0]) + 1) * max(0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    area = lambda x: (x[2] - x[0] + 1) * (x[3] - x[1] + 1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset_dir", default="", help="MSD folder (default: the demo phantoms, for costs only)")
    ap.add_argument("--sam2_checkpoint", default=None, help="SAM2 checkpoint (default: random SAM2.1 tiny, costs only)")
    ap.add_argument(
        "--student_checkpoint",
        default=str(BUNDLE_ROOT / "models" / "model.pt"),
        help="SegOne model.pt as the student (default: %(default)s)",
    )
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024], help="SAM2 image sizes timed")
    ap.add_argument("--prompts", nargs="+", default=["box", "points", "box+points"], help="SAM2 prompt kinds timed")
    ap.add_argument("--slices", type=int, default=6, help="prompted slices timed per size and prompt")
    ap.add_argument("--cases", type=int, default=42, help="held-out cases for the box agreement table")
    ap.add_argument("--cost_size", type=int, default=512, help="SAM2 image size of the per-case table")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from bundle.teacher import SAM2Teacher, TeacherCache

    tmp = Path(tempfile.mkdtemp(prefix="segone-teacher-"))
    sam2_file = Path(args.sam2_checkpoint) if args.sam2_checkpoint else random_sam2(tmp / "sam2_random_tiny.pt")
    weights = "given checkpoint" if args.sam2_checkpoint else "random weights: costs only"
    cases = load_cases(args.dataset_dir, "test", max(args.cases, 1))
    name, image, label = cases[0]
    print(
        f"# SAM2 teacher costs, {torch.get_num_threads()} threads, SAM2.1 tiny ({weights}); case {name} "
        f"{'x'.join(map(str, image.shape))}\n"
    )

    print("| image size | " + " | ".join(f"{p}: s / slice" for p in args.prompts) + " |")
    print("|---:|" + "---:|" * len(args.prompts))
    mask = label == 1
    present = np.nonzero(mask.any(axis=(0, 1)))[0]
    keep = np.zeros_like(mask)
    keep[:, :, present[: args.slices]] = True
    for size in args.sizes:
        row = []
        for prompt in args.prompts:
            teacher = SAM2Teacher(sam2_file, CONFIG, image_size=size, prompt=prompt)
            teacher.volume(image, mask & keep)  # warm-up (first-call allocations)
            start = time.perf_counter()
            _, iou = teacher.volume(image, mask & keep)
            row.append((time.perf_counter() - start) / np.isfinite(iou).sum())
        print(f"| {size} | " + " | ".join(f"{s:.2f}" for s in row) + " |")

    from bundle.teacher import StudentMasks

    student = StudentMasks.from_inference_config(args.student_checkpoint, BUNDLE_ROOT)
    x = torch.as_tensor(image)[None]
    student(x)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        predicted = student(x)
        times.append(time.perf_counter() - start)
    print(
        f"\nStudent ({Path(args.student_checkpoint).name}) label map of the case: {statistics.median(times) * 1000:.0f} ms "
        "(median of 5; once per case, while the dataset is cached)\n"
    )

    print(
        f"| prompts from (SAM2 at {args.cost_size}, box) | class | prompted slices | cold: SAM2 s | cache entry KiB "
        "| warm read ms |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for source, box_mode in (("label", "slice"), ("student", "slice"), ("student", "volume")):
        teacher = SAM2Teacher(sam2_file, CONFIG, image_size=args.cost_size, box_mode=box_mode)
        cache = TeacherCache(tmp / f"cache-{source}-{box_mode}")
        for value in (1, 2):
            m = (label if source == "label" else predicted) == value
            start = time.perf_counter()
            _, iou = cache.get_or_compute(teacher, name, value, image, m)
            cold = time.perf_counter() - start
            size_kib = cache.path(TeacherCache.case_key(name, image, m), value, teacher.settings).stat().st_size / 1024
            start = time.perf_counter()
            cache.get_or_compute(teacher, name, value, image, m)
            warm = (time.perf_counter() - start) * 1000
            what = f"{source}, {box_mode} box" + ("es" if box_mode == "slice" else "")
            print(f"| {what} | {value} | {np.isfinite(iou).sum()} | {cold:.1f} | {size_kib:.0f} | {warm:.1f} |")
        # as training does it: both classes together, one image encoding per slice prompted for either
        masks = {v: (label if source == "label" else predicted) == v for v in (1, 2)}
        cache = TeacherCache(tmp / f"cache-{source}-{box_mode}-together")
        start = time.perf_counter()
        both = cache.get_or_compute_many(teacher, name, image, masks)
        cold = time.perf_counter() - start
        union = np.logical_or(*(np.isfinite(iou) for _, iou in both.values())).sum()
        print(f"| {what} | 1 and 2 together | {union} (encoded) | {cold:.1f} | | |")

    if args.dataset_dir:
        print(f"\n## The student's masks as prompts, {len(cases)} held-out cases ({args.student_checkpoint})\n")
        print(
            "| class | slices with the structure | student prompts them | student adds | mean box IoU "
            "(slices both have) | student Dice |"
        )
        print("|---:|---:|---:|---:|---:|---:|")
        for value in (1, 2):
            gt_n = hit = extra = 0
            ious, dices = [], []
            for _, img, lab in cases:
                pred = student(torch.as_tensor(img)[None]) == value
                gt = lab == value
                g, s = boxes(gt), boxes(pred)
                gt_n += len(g)
                hit += len(set(g) & set(s))
                extra += len(set(s) - set(g))
                ious += [box_iou(g[k], s[k]) for k in set(g) & set(s)]
                dices.append(2 * (gt & pred).sum() / max(gt.sum() + pred.sum(), 1))
            print(
                f"| {value} | {gt_n} | {hit} ({100 * hit / max(gt_n, 1):.1f}%) | {extra} | "
                f"{np.mean(ious):.3f} | {np.mean(dices):.3f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
