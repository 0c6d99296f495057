#!/usr/bin/env python
"""Does SegOne's context design pay off? Train network variants for the same wall-clock budget, compare Dice.

Supervised 3-class segmentation (background, anterior, posterior hippocampus) on the MSD Task04 hippocampus
crops: a seeded split keeps ``--test_fraction`` of the cases out of training; every variant trains from the same
seed, on the same batches, for ``--budget`` seconds on the CPU, then is evaluated on the held-out cases. This
isolates the network (no diffusion, no text): how much each context mechanism is worth per second of CPU.

    python scripts/experiments/ablate_context.py --dataset_dir ../shared/data/hippocampus --budget 240
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from bundle.utils.config import BUNDLE_ROOT

PATCH = (48, 64, 48)


def variants() -> dict[str, Callable[[], torch.nn.Module]]:
    """The default SegOne, each context mechanism removed from it, and design alternatives; MONAI UNet for scale.

    Returns:
        ``{variant name: a function building the network}``.
    """
    from monai.networks.nets import UNet

    from bundle.networks import SegOne

    def segone(**kwargs) -> Callable[[], torch.nn.Module]:
        return lambda: SegOne(3, 1, 3, **kwargs)

    return {
        "SegOne default (shifts + global context)": segone(),
        "without global context": segone(global_context=False),
        "without shifts (global context only)": segone(spatial_shift=False),
        "aligned unshuffle pyramid only": segone(spatial_shift=False, global_context=False),
        "with full-resolution blocks": segone(encoder_blocks=(1, 1, 2, 2, 2), decoder_blocks=(1, 1, 1, 1)),
        "BatchNorm instead of InstanceNorm": segone(norm="batch"),
        "MONAI UNet (reference)": lambda: UNet(3, 1, 3, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2),
    }


def load_cases(dataset_dir: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """An MSD folder's training cases, normalised and zero-padded to the patch.

    Args:
        dataset_dir: the MSD folder.

    Returns:
        ``[(name, image, label)]``, each array of the patch size.

    Raises:
        ValueError: naming the image, when a case does not fit the patch or its label has another shape.
    """
    import nibabel as nib

    meta = json.loads((dataset_dir / "dataset.json").read_text())
    cases = []
    for item in meta["training"]:
        img_path, lab_path = dataset_dir / item["image"], dataset_dir / item["label"]
        img = np.asarray(nib.load(str(img_path)).dataobj, dtype=np.float32)
        lab = np.asarray(nib.load(str(lab_path)).dataobj).astype(np.int64)
        if img.shape != lab.shape or any(s > p for s, p in zip(img.shape, PATCH)):
            raise ValueError(f"{img_path}: shape {img.shape} (label {lab.shape}) does not fit the {PATCH} patch")
        img = (img - img.mean()) / max(float(img.std()), 1e-6)
        pad = [(0, p - s) for s, p in zip(img.shape, PATCH)]
        cases.append((img_path.name, np.pad(img, pad), np.pad(lab, pad)))
    return cases


def dice_per_class(pred: torch.Tensor, label: torch.Tensor, classes: Sequence[int] = (1, 2)) -> list[float]:
    """Dice of a label map per class.

    Args:
        pred: the predicted label map.
        label: the ground truth.
        classes: the label values scored.

    Returns:
        One Dice per class (1.0 when both are empty).
    """
    out = []
    for c in classes:
        p, g = pred == c, label == c
        denom = p.sum() + g.sum()
        out.append(float(2 * (p & g).sum() / denom) if denom else 1.0)
    return out


def train_and_eval(
    make: Callable[[], torch.nn.Module],
    train: Sequence[tuple[str, np.ndarray, np.ndarray]],
    test: Sequence[tuple[str, np.ndarray, np.ndarray]],
    budget: float,
    batch: int,
    seed: int,
    steps_limit: int = 0,
) -> dict[str, float]:
    """Trains one variant and scores it on the held-out cases.

    Args:
        make: builds the network.
        train: the training cases (:func:`load_cases`).
        test: the held-out cases.
        budget: training seconds (when ``steps_limit`` is 0).
        batch: the batch size.
        seed: the seed of the weights, the batches and the flips.
        steps_limit: a fixed number of training steps instead of the budget (0: use the budget).

    Returns:
        Parameters (millions), steps, seconds per step, Dice per class and mean, inference milliseconds per volume.
    """
    from monai.losses import DiceCELoss

    torch.manual_seed(seed)
    rng = random.Random(seed)
    net = make()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    net.train()
    steps, start = 0, time.perf_counter()
    # a fixed number of steps when ``steps_limit`` is set, else a wall-clock budget
    while (steps < steps_limit) if steps_limit else (time.perf_counter() - start < budget):
        idx = [rng.randrange(len(train)) for _ in range(batch)]
        x = torch.from_numpy(np.stack([train[i][1] for i in idx]))[:, None]
        y = torch.from_numpy(np.stack([train[i][2] for i in idx]))[:, None]
        if rng.random() < 0.5:  # left-right flip: the two hippocampi are mirror images
            x, y = x.flip(2), y.flip(2)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        steps += 1
    train_time = time.perf_counter() - start
    net.eval()
    scores = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for _, img, lab in test:
            pred = net(torch.from_numpy(img)[None, None]).argmax(1)[0]
            scores.append(dice_per_class(pred, torch.from_numpy(lab)))
    infer_ms = (time.perf_counter() - t0) / len(test) * 1000
    scores_np = np.asarray(scores)
    return {
        "params_m": sum(p.numel() for p in net.parameters()) / 1e6,
        "steps": steps,
        "s_per_step": train_time / steps,
        "dice_anterior": float(scores_np[:, 0].mean()),
        "dice_posterior": float(scores_np[:, 1].mean()),
        "dice_mean": float(scores_np.mean()),
        "infer_ms": infer_ms,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--dataset_dir",
        type=Path,
        default=BUNDLE_ROOT.parent / "shared" / "data" / "hippocampus",
        help="MSD Task04_Hippocampus folder (default: %(default)s)",
    )
    parser.add_argument("--budget", type=float, default=240.0, help="training seconds per variant")
    parser.add_argument("--steps", type=int, default=0, help="train a fixed number of steps instead (0: use --budget)")
    parser.add_argument("--batch", type=int, default=4, help="batch size")
    parser.add_argument("--test_fraction", type=float, default=0.2, help="fraction of the cases held out")
    parser.add_argument("--seed", type=int, default=0, help="split, weights and batches seed")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--variants", nargs="+", help="subset of variant names")
    parser.add_argument("--output_file", type=Path, help="also write the markdown table here")
    args = parser.parse_args(argv)
    if not (args.dataset_dir / "dataset.json").is_file():
        parser.error(f"{args.dataset_dir}: no dataset.json (an MSD Task04_Hippocampus folder is needed)")
    torch.set_num_threads(args.threads)

    cases = load_cases(args.dataset_dir)
    order = list(range(len(cases)))
    random.Random(args.seed).shuffle(order)
    n_test = max(1, int(round(len(cases) * args.test_fraction)))
    test = [cases[i] for i in order[:n_test]]
    train = [cases[i] for i in order[n_test:]]
    per_variant = f"{args.steps} steps" if args.steps else f"{args.budget:.0f} s"
    print(f"{len(train)} training cases, {len(test)} held-out cases, {per_variant} of training per variant")

    header = (
        "| variant | params (M) | steps | s/step | Dice anterior | Dice posterior | mean Dice | ms/volume |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    lines = [header]
    print(header, flush=True)
    for name, make in variants().items():
        if args.variants and name not in args.variants:
            continue
        r = train_and_eval(make, train, test, args.budget, args.batch, args.seed, args.steps)
        line = (
            f"| {name} | {r['params_m']:.2f} | {r['steps']} | {r['s_per_step']:.2f} | {r['dice_anterior']:.3f} | "
            f"{r['dice_posterior']:.3f} | {r['dice_mean']:.3f} | {r['infer_ms']:.0f} |"
        )
        lines.append(line)
        print(line, flush=True)
    if args.output_file:
        args.output_file.parent.mkdir(parents=True, exist_ok=True)
        args.output_file.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
