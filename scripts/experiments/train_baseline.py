#!/usr/bin/env python
"""Baselines for the model card: MONAI U-Nets trained on SegOne's split, preprocessing, recipe and time budget.

The same seeded split (``bundle.data.dataset_split``, so the same test cases), the same loading, orientation,
normalisation, padding/cropping and spatial and intensity augmentation as ``configs/train.json`` (those transforms
are taken from it), the same batch size, optimiser, learning rate, warm-up and cosine schedule (over the time budget
instead of epochs, or over ``--max_epochs`` epochs with train.json's warm-up epochs) and weight EMA (``ema_decay``; the
EMA weights are validated and kept); supervised 3-class training with Dice + cross-entropy for ``--budget`` seconds of
wall-clock time (validation included, as in SegOne's run) or for ``--max_epochs`` epochs (the same number of samples
as a SegOne run of that many epochs, for runs on another machine), keeping the weights with the best validation Dice.
It trains on the GPU when there is one (``--device``), like train.json.

Networks (``--arch``): ``unet`` (MONAI ``UNet`` 16-256, 2 residual units: the model card's baseline),
``basicunet``, and ``dynunet``: MONAI ``DynUNet`` configured like nnU-Net v2's 3d_fullres plan for MSD Task04 (four
stages of 32-256 features, two 3x3x3 convolutions per stage, instance norm, leaky ReLU, deep supervision with heads
at the two coarser decoder levels, weights 1, 1/2, 1/4 normalised), trained on the bundle's 48x64x48 window (which
holds a whole case) instead of nnU-Net's 40x56x40 patch.

It then scores the test split with the same metrics code as ``configs/evaluate.json`` (``bundle.evaluation``),
times whole-volume sliding-window inference, and writes ``metrics.json``.

    python scripts/experiments/train_baseline.py --dataset_dir ../shared/data/hippocampus --budget 1800 \\
        --output_dir runs/baseline [--arch dynunet] [--max_epochs 200 instead of --budget]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bundle.utils.cli import add_override_option, parse_overrides
from bundle.utils.config import load_bundle_config


def build_network(arch: str, out_channels: int = 3, in_channels: int = 1) -> torch.nn.Module:
    """The baseline network.

    Args:
        arch: ``"unet"`` (MONAI UNet, channels 16-256, 2 residual units), ``"basicunet"`` or ``"dynunet"`` (MONAI
            DynUNet as nnU-Net's 3d_fullres plan for Task04, with deep supervision).
        out_channels: background + the data set's classes (3 for the hippocampus).
        in_channels: the image's channels (train.json's ``image_channels``: 4 with ``coordinate_channels``).

    Returns:
        The untrained network.
    """
    from monai.networks.nets import BasicUNet, DynUNet, UNet

    if arch == "unet":
        return UNet(3, in_channels, out_channels, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2)
    if arch == "basicunet":
        return BasicUNet(3, in_channels, out_channels)
    if arch == "dynunet":
        return DynUNet(
            3,
            in_channels,
            out_channels,
            kernel_size=[3, 3, 3, 3],
            strides=[1, 2, 2, 2],
            upsample_kernel_size=[2, 2, 2],
            filters=[32, 64, 128, 256],
            norm_name=("instance", {"affine": True}),
            act_name=("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
            deep_supervision=True,
            deep_supr_num=2,
        )
    raise ValueError(f"unknown arch {arch!r} (unet, basicunet, dynunet)")


def deep_supervision_loss(loss_fn: Any, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """nnU-Net's deep-supervision loss: the heads' losses weighted 1, 1/2, 1/4, ... and normalised to sum to one.

    Args:
        loss_fn: the loss of one output against the label, e.g. MONAI ``DiceCELoss``.
        outputs: ``[B, C, *S]`` (one output) or DynUNet's training output ``[B, H, C, *S]`` (H heads, all upsampled
            to the label's size, full resolution first).
        target: the label ``[B, 1, *S]``.

    Returns:
        The scalar loss.
    """
    if outputs.dim() == target.dim():
        return loss_fn(outputs, target)
    weights = [0.5**i for i in range(outputs.shape[1])]
    total = sum(weights)
    return sum(w / total * loss_fn(outputs[:, i], target) for i, w in enumerate(weights))


def transforms_from_train_config(overrides: dict[str, Any] | None = None) -> tuple[Any, Any, Any]:
    """SegOne's preprocessing, read from configs/train.json.

    Evaluation: loading, checks, orientation, normalisation (and, with ``coordinate_channels``, the voxels'
    positions as channels). Training adds padding, cropping and the augmentation: the random transforms before the
    prompt sampling (those that the recipe's switches leave on).

    Args:
        overrides: train.json overrides, e.g. ``{"augment_spatial": True}`` (the recipe's switches).

    Returns:
        ``(training transforms, evaluation transforms, the train.json parser)``.
    """
    from monai.transforms import Compose

    parser = load_bundle_config("train.json", overrides=dict(overrides or {}))
    load = list(parser.get_parsed_content("load_transforms"))
    random = []
    for i, item in enumerate(parser["train"]["random_transforms"]):
        if isinstance(item, dict) and "RandPromptd" in str(item.get("_target_")):
            break
        transform = parser.get_parsed_content(f"train#random_transforms#{i}")
        if transform is not None:  # switched off by the recipe (``_disabled_``)
            random.append(transform)
    join = [t for t in parser.get_parsed_content("join_coordinates") if t is not None]
    return Compose(load + random), Compose(load + join), parser


def learning_rate_factor(elapsed: float, warmup: float, total: float) -> float:
    """train.json's learning-rate schedules over time or epochs: MONAI ``WarmupCosineSchedule`` (``warmup_multiplier``
    0.1) when there is a warm-up, else cosine decay to 5 % (``CosineAnnealingLR`` with ``eta_min`` 5 %).

    Args:
        elapsed: training so far (seconds or epochs, the unit of ``total``).
        warmup: linear warm-up from 0.1 to 1, in that unit (0: no warm-up).
        total: the budget (seconds or epochs).

    Returns:
        The learning-rate factor in ``[0, 1]``.
    """
    if warmup <= 0:
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(elapsed / total, 1.0)))
    if elapsed < warmup:
        return 0.1 + 0.9 * elapsed / max(warmup, 1e-9)
    progress = (elapsed - warmup) / max(total - warmup, 1e-9)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset_dir", required=True, help="MSD folder")
    ap.add_argument("--output_dir", default="runs/baseline", help="model.pt and metrics.json (default: %(default)s)")
    ap.add_argument("--arch", default="unet", choices=["unet", "basicunet", "dynunet"], help="baseline network")
    ap.add_argument("--budget", type=float, default=0.0, help="training wall-clock seconds, validation included")
    ap.add_argument(
        "--max_epochs", type=int, default=0, help="train this many epochs instead of a time budget (schedule by epoch)"
    )
    ap.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device (default: %(default)s)"
    )
    ap.add_argument("--num_workers", type=int, default=0, help="data loader worker processes (default: %(default)s)")
    ap.add_argument("--val_every", type=int, default=5, help="epochs between validations")
    ap.add_argument("--seed", type=int, default=0, help="determinism seed")
    ap.add_argument(
        "--eval_only",
        action="store_true",
        help="no training: score OUTPUT_DIR/model.pt on the test split (or --eval_split) again (keeps the recorded run)",
    )
    ap.add_argument(
        "--eval_split",
        choices=("test", "val"),
        default="test",
        help="the split scored after training or with --eval_only (default: %(default)s; val chooses post-processing "
        "such as --keep_largest without reading the test split)",
    )
    ap.add_argument(
        "--keep_largest",
        nargs="*",
        default=None,
        metavar="STRUCTURE",
        help="keep the largest connected component of each label before scoring (inference.json's keep_largest); "
        "with structure names, of those alone (a choice per structure, scripts/experiments/largest_component.py)",
    )
    ap.add_argument(
        "--metrics_name", default="metrics.json", help="the metrics file in OUTPUT_DIR (default: %(default)s)"
    )
    add_override_option(ap, "--set", "train.json override, e.g. --set augment_spatial=true (the recipe's switches)")
    args = ap.parse_args(argv)
    if Path(args.metrics_name).name != args.metrics_name or not args.metrics_name.endswith(".json"):
        ap.error(f"--metrics_name must be a .json file name inside OUTPUT_DIR, got {args.metrics_name!r}")
    if not args.eval_only and (args.budget > 0) == (args.max_epochs > 0):
        ap.error("one of --budget (seconds, > 0) or --max_epochs (> 0) is required unless --eval_only")

    from monai.data import CacheDataset, DataLoader
    from monai.losses import DiceCELoss
    from monai.transforms import KeepLargestConnectedComponent
    from monai.utils import convert_to_tensor, set_determinism

    from bundle.data import WindowBatchSampler, add_windows, dataset_split, window_groups
    from bundle.evaluation import case_metrics, format_table, summarize
    from bundle.inference import SpacingWindowInferer
    from bundle.training import WeightEMA
    from bundle.transforms import largest_component_labels
    from bundle.utils import keep_freed_memory

    # the malloc settings of SegOne's workflows (train.json), so the baselines train under the same conditions
    keep_freed_memory()
    set_determinism(args.seed)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    # the parser sees the data set too: its classes (a folder's own, a suite's vocabulary) and label renumbering
    train_tf, eval_tf, parser = transforms_from_train_config(
        {**parse_overrides(args.set), "dataset_dir": args.dataset_dir}
    )
    split = {
        s: dataset_split(
            args.dataset_dir,
            s,
            seed=parser["split_seed"],
            val_fraction=parser["val_fraction"],
            test_fraction=parser["test_fraction"],
        )
        for s in ("train", "val", "test")
    }
    roi = tuple(parser.get_parsed_content("roi_size"))  # a macro of inference.json's
    # windows shaped by spacing (thick slices), as train.json and inference.json plan them for SegOne
    thick_ratio = float(parser.get_parsed_content("thick_slice_ratio"))
    multiple = int(parser.get_parsed_content("window_multiple"))
    batch, lr = int(parser["batch_size"]), float(parser["learning_rate"])
    ema_decay = float(parser.get_parsed_content("ema_decay"))
    # train.json's schedules, over the time budget (warm-up for the same fraction of the run as train.json's
    # max_epochs // 30 would be) or over epochs (train.json's own warm-up epochs); without warm-up, cosine decay to 5 %
    warmup_epochs = float(parser.get_parsed_content("warmup_epochs"))
    if args.max_epochs > 0:
        warmup, total = warmup_epochs, float(args.max_epochs)
    else:
        warmup, total = (args.budget / 30.0 if warmup_epochs > 0 else 0.0), args.budget
    device = torch.device(args.device)
    classes = parser.get_parsed_content("class_names")

    train_items = add_windows(split["train"], roi, multiple, thick_ratio)
    if thick_ratio > 0:  # crops of one window per batch
        batching: dict[str, Any] = {
            "batch_sampler": WindowBatchSampler(window_groups(train_items), batch, seed=args.seed)
        }
    else:
        batching = {"batch_size": batch, "shuffle": True, "drop_last": True}
    train_loader = DataLoader(
        CacheDataset(train_items, train_tf, progress=False), num_workers=args.num_workers, **batching
    )
    val_data = CacheDataset(split["val"], eval_tf, progress=False)
    if not args.eval_only and len(train_loader) == 0:  # an epoch budget would never be used up
        raise SystemExit(
            f"{args.dataset_dir}: {len(split['train'])} training cases make no whole batch of {batch} "
            "(batches are full, the last one dropped): use more cases or a smaller batch_size"
        )
    net = build_network(args.arch, len(classes) + 1, int(parser.get_parsed_content("image_channels"))).to(device)
    params = sum(p.numel() for p in net.parameters())
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-5)
    ema = WeightEMA(net, decay=ema_decay) if ema_decay > 0 else None
    scored = ema.module if ema is not None else net  # the weights validated, kept and tested
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    inferer = SpacingWindowInferer(
        roi, multiple=multiple, thick_ratio=thick_ratio, sw_batch_size=1, overlap=0.25, mode="gaussian"
    )

    # no names after the switch: every structure (inference.json's keep_largest True)
    keep_largest = False if args.keep_largest is None else (args.keep_largest or True)
    positions = largest_component_labels(list(classes.values()), keep_largest)
    largest = (
        KeepLargestConnectedComponent([list(classes)[p - 1] for p in positions], independent=True, connectivity=3)
        if positions
        else None
    )

    def predict(image: torch.Tensor) -> torch.Tensor:
        scored.eval()
        with torch.no_grad():
            label_map = inferer(image[None].to(device), scored)[0].argmax(0).cpu()
        return label_map if largest is None else torch.as_tensor(largest(label_map[None]))[0]

    def val_dice() -> float:
        scores = []
        for item in val_data:
            m = case_metrics(predict(item["image"]).numpy(), item["label"][0].numpy().astype(int), classes)
            scores.append(np.mean([m[c]["dice"] for c in classes.values()]))
        return float(np.mean(scores))

    def progress() -> float:  # how far the run is, in the schedule's unit (seconds or epochs)
        if args.max_epochs > 0:
            return steps / max(len(train_loader), 1)
        return time.perf_counter() - start

    start, epoch, steps = time.perf_counter(), 0, 0
    best, best_epoch, history = -1.0, 0, []

    def validate(losses: list[float]) -> None:
        nonlocal best, best_epoch
        d = val_dice()
        history.append({"epoch": epoch, "loss": float(np.mean(losses)) if losses else None, "val_dice": d})
        loss_text = f"{np.mean(losses):.4f}" if losses else "-"
        print(
            f"epoch {epoch} steps {steps} loss {loss_text} val dice {d:.4f} ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
        if d > best:
            best, best_epoch = d, epoch
            torch.save(scored.state_dict(), out / "model.pt")

    previous: list[float] = []  # the last epoch's step losses
    while not args.eval_only:
        epoch += 1
        net.train()
        losses = []
        for item in train_loader:
            elapsed = progress()
            if elapsed >= total:
                break
            for g in opt.param_groups:
                g["lr"] = lr * learning_rate_factor(elapsed, warmup, total)
            opt.zero_grad()
            # plain tensors, as DiffusionPrepareBatch hands SegOne: MONAI metadata costs time and the loss never reads it
            image = convert_to_tensor(item["image"], track_meta=False).to(device)
            label = convert_to_tensor(item["label"], track_meta=False).to(device).long()
            loss = deep_supervision_loss(loss_fn, net(image), label)
            loss.backward()
            opt.step()
            if ema is not None:
                ema.update_parameters(net)
            losses.append(float(loss.detach()))
            steps += 1
        if not losses and epoch > 1:
            # the budget ran out before this epoch's first step: it is not an epoch, the last trained one is final
            epoch -= 1
            if not history or history[-1]["epoch"] != epoch:
                validate(previous)
            break
        # read once: a second reading could find the budget spent after this one did not, and end the run unvalidated
        done = progress() >= total
        if epoch % args.val_every == 0 or done:
            validate(losses)
        if done:
            break
        previous = losses
    train_seconds = time.perf_counter() - start

    scored.load_state_dict(torch.load(out / "model.pt", weights_only=True, map_location=device))
    cases, times = [], []
    for item in CacheDataset(split[args.eval_split], eval_tf, progress=False):
        t0 = time.perf_counter()
        pred = predict(item["image"])
        times.append(time.perf_counter() - t0)
        affine = np.asarray(item["label"].affine)
        spacing = np.linalg.norm(affine[:3, :3], axis=0).tolist()
        cases.append(
            {
                "image": item["image"].meta["filename_or_obj"],
                **case_metrics(pred.numpy(), item["label"][0].numpy().astype(int), classes, spacing),
            }
        )
    summary = summarize(cases, list(classes.values()))
    if args.eval_only:
        previous = json.loads((out / "metrics.json").read_text())["run"] if (out / "metrics.json").is_file() else {}
        summary["run"] = {**previous, "inference_s_per_volume": float(np.median(times))}
        summary["run"]["keep_largest"] = keep_largest
        summary["run"]["eval_split"] = args.eval_split
        (out / args.metrics_name).write_text(json.dumps(summary, indent=2))
        print(format_table(summary))
        return 0
    summary["run"] = {
        "arch": args.arch,
        "parameters": params,
        "ema_decay": ema_decay,
        "train_overrides": parse_overrides(args.set),
        "budget_s": args.budget,
        "max_epochs": args.max_epochs,
        "device": str(device),
        "train_seconds": train_seconds,
        "epochs": epoch,
        "steps": steps,
        "best_val_dice": best,
        "best_epoch": best_epoch,
        "inference_s_per_volume": float(np.median(times)),
        "keep_largest": keep_largest,
        "eval_split": args.eval_split,
        "threads": torch.get_num_threads(),
        "history": history,
    }
    (out / args.metrics_name).write_text(json.dumps(summary, indent=2))
    print(
        f"\n{args.arch}: {params} parameters, {steps} steps in {train_seconds:.0f} s, best val Dice {best:.4f} "
        f"(epoch {best_epoch}); inference {np.median(times) * 1000:.0f} ms/volume (median)"
    )
    print(format_table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
