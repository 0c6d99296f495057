#!/usr/bin/env python
"""Whole-volume inference time on the CPU (or a GPU, ``--device cuda``): SegOne (all class prompts, by DDIM steps)
against U-Net baselines.

Every network runs through the same sliding-window inferer as ``configs/inference.json`` (ROI 48x64x48,
overlap 0.25, Gaussian blending; with ``--spacing`` and ``--thick_slice_ratio``, the window planned from the spacing)
on a volume of the size of an MSD hippocampus crop, with the bundle workflows'
``malloc`` settings (:func:`bundle.utils.keep_freed_memory`; ``SEGONE_MALLOC=stock`` for glibc's own). The networks are timed in
interleaved rounds (one run of each per round, the order rotating), so a change in the machine's load hits every
row alike; the table gives the median and the ratio to the MONAI UNet baseline at the same thread count (with several
``--sw_batch_size`` values or ``--compile``, to the UNet at its fastest of them). Timing does not depend on the weights: the U-Nets
run untrained.

    python scripts/benchmarks/benchmark_inference.py --steps 1 2 --threads 1 2 --repeats 20
    # another SegOne configuration, e.g. the recipe's shift blocks at 2 mm
    python scripts/benchmarks/benchmark_inference.py --set "encoder_blocks=[1,1,2,2]" --set "decoder_blocks=[1,1,1]"
    # several SegOne configurations in the same rounds: each --variant adds rows (';' between its overrides);
    # --head_in_order adds each one's head run as bundle <= 0.17 ran it
    python scripts/benchmarks/benchmark_inference.py --num_classes 4 --variant "shared_decoder=True" \
        --variant "shared_decoder=True;features=[16,64,128,256]"
    # every network also through torch.compile (inference.json's compile), in the same rounds; the ratio is to the
    # UNet's fastest row, compiled or not, and the first (compiling) call of each is timed apart
    python scripts/benchmarks/benchmark_inference.py --compile --shape 256 256 34 --num_classes 4 --sw_batch_size 1 4
    # a cine heart's volume in the window planned from its spacing (16x96x96), both networks alike
    python scripts/benchmarks/benchmark_inference.py --shape 10 256 216 --spacing 10 1.5 1.5 --thick_slice_ratio 3 \
        --num_classes 3 --sw_batch_size 1 4
    # a network trained with the voxels' positions as channels (coordinate_channels), beside the one without
    python scripts/benchmarks/benchmark_inference.py --shape 256 256 34 --spacing 1.25 1.25 7.7 --thick_slice_ratio 3 \
        --num_classes 4 --variant "coordinate_channels=True"
    # on a GPU: each timed call waits for the device to finish (torch.cuda.synchronize)
    python scripts/benchmarks/benchmark_inference.py --device cuda --threads 4 --sw_batch_size 1 4 16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from bundle.utils.cli import add_override_option, parse_overrides
from bundle.utils.config import BUNDLE_ROOT, load_bundle_config
from bundle.utils.memory import keep_freed_memory

BASELINE = "MONAI UNet (baseline)"


class EncoderPerPrompt(torch.nn.Module):
    """A segmenter run as bundle <= 0.9 ran it: every (window, prompt) pair encoded on its own.

    The reference row for the shared first-step encoder (``SegOne.forward_prompts``): the same model, the same
    sampling, one encoder pass per prompt instead of one per window.

    Args:
        segmenter: a :class:`~bundle.diffusion.PromptedSegmenter`.
    """

    def __init__(self, segmenter: torch.nn.Module) -> None:
        super().__init__()
        self.segmenter = segmenter

    def forward(self, image: torch.Tensor, prompt_embeddings: torch.Tensor) -> torch.Tensor:
        """``image [B, C, *S]``, ``prompt_embeddings [K, E]`` -> the prompts' probabilities ``[B, K, *S]``."""
        seg, b, k = self.segmenter, image.shape[0], prompt_embeddings.shape[0]
        context = prompt_embeddings.repeat(b, 1)
        prob, _ = seg.sample(image.repeat_interleave(k, dim=0), context, seg.num_inference_steps, seg.seed)
        return prob.reshape(b, k, *image.shape[2:])


class HeadInOrder(torch.nn.Module):
    """A SegOne head run in its defining order (bundle <= 0.17): the projection pixel-shuffled to full resolution,
    then the refinement's two 1x1 maps at every voxel, for each prompt.

    The reference row for the folded eager head (``_Head.refine_folded``): the same weights and values.

    Args:
        head: the network's ``head``.
    """

    def __init__(self, head: torch.nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor, inputs: torch.Tensor, prompts_per_image: int = 1) -> torch.Tensor:
        """As the head's ``forward``: ``x [B * K, C, *s]``, ``inputs [B, C_in, *S]`` -> ``[B * K, C_out, *S]``."""
        from bundle.networks.blocks import repeat_items

        return self.head.refine_at_full_resolution(x, repeat_items(inputs, prompts_per_image))


def with_head_in_order(segmenter: torch.nn.Module) -> torch.nn.Module:
    """A copy of a :class:`~bundle.diffusion.PromptedSegmenter` whose denoiser's head runs as :class:`HeadInOrder`."""
    import copy

    reference = copy.deepcopy(segmenter)
    reference.denoiser.head = HeadInOrder(reference.denoiser.head)
    return reference


def segone(steps: int, ckpt_path: Path, overrides: Mapping[str, Any] | None = None) -> torch.nn.Module:
    """SegOne as configs/inference.json builds it.

    Args:
        steps: DDIM steps per prompt.
        ckpt_path: the model file, loaded when it exists and no ``overrides`` are given (else random weights: timing
            does not depend on them).
        overrides: inference.json overrides (e.g. ``{"encoder_blocks": [1, 1, 2, 2]}``).

    Returns:
        The network in eval mode.
    """
    config = {"num_inference_steps": steps, "ckpt_path": str(ckpt_path), **(overrides or {})}
    parser = load_bundle_config("inference.json", overrides=config)
    load = ckpt_path.is_file() and not overrides
    return parser.get_parsed_content("network" if load else "network_def").eval()


def baseline_unet(num_classes: int) -> torch.nn.Module:
    """The MONAI UNet of the model card's baseline (16-256 channels, 2 residual units), ``num_classes`` + background
    outputs, in eval mode."""
    from monai.networks.nets import UNet

    return UNet(3, 1, num_classes + 1, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2).eval()


def interleaved_seconds(runs: Mapping[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Times callables in interleaved rounds: each round runs every callable once, in an order that rotates.

    Args:
        runs: ``{name: callable}``.
        repeats: timed rounds.
        warmup: untimed runs of each callable first.

    Returns:
        ``{name: [seconds per round]}``.
    """
    names = list(runs)
    for name in names:
        for _ in range(warmup):
            runs[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def main(argv: Sequence[str] | None = None) -> int:
    from monai.data import MetaTensor
    from monai.networks.nets import BasicUNet

    from bundle.diffusion import PromptedSegmenter
    from bundle.inference import CompiledNetwork, SpacingWindowInferer
    from bundle.transforms import AddCoordinatesd

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2], help="SegOne DDIM step counts to time")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts, one table each")
    ap.add_argument("--repeats", type=int, default=20, help="interleaved timed rounds (the median is reported)")
    ap.add_argument("--shape", type=int, nargs=3, default=[36, 50, 36], help="volume size (a hippocampus crop)")
    ap.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        default=None,
        help="the volume's voxel spacing in mm (with --thick_slice_ratio, the window is planned from it)",
    )
    ap.add_argument(
        "--thick_slice_ratio",
        type=float,
        default=0.0,
        help="inference.json's thick_slice_ratio: every network's window is planned from --spacing "
        "(bundle.inference.SpacingWindowInferer; 0 keeps 48x64x48)",
    )
    ap.add_argument(
        "--num_classes",
        type=int,
        default=2,
        help="structures segmented: SegOne's prompts, the U-Nets' output channels less background (a suite data "
        "set's: 4 for the abdomen)",
    )
    ap.add_argument(
        "--sw_batch_size",
        type=int,
        nargs="+",
        default=[1],
        help="windows per network call (inference.json's sw_batch_size), every network at each; with several, the "
        "ratio is to the fastest UNet row",
    )
    ap.add_argument("--basic_unet", action="store_true", help="also time MONAI BasicUNet (about 5x the UNet)")
    ap.add_argument(
        "--encoder_per_prompt",
        action="store_true",
        help="also time each SegOne with one encoder pass per prompt (bundle <= 0.9), against the shared encoder",
    )
    ap.add_argument(
        "--head_in_order",
        action="store_true",
        help="also time each SegOne with its head in the defining order (bundle <= 0.17), against the folded head",
    )
    ap.add_argument(
        "--compile",
        action="store_true",
        help="also time every network through torch.compile (bundle.inference.CompiledNetwork), the UNet included",
    )
    ap.add_argument(
        "--ckpt_path",
        default=str(BUNDLE_ROOT / "models" / "model.pt"),
        help="SegOne model file (default: %(default)s; random weights when it is absent or with --set)",
    )
    ap.add_argument("--device", default="cpu", help="where the networks and the volume are: cpu (default) or cuda[:N]")
    add_override_option(ap, "--set", "inference.json override for SegOne, e.g. --set encoder_blocks=[1,1,2,2]")
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="KEY=VALUE[;KEY=VALUE]",
        help="another SegOne configuration timed in the same rounds, on top of --set (repeatable; random weights)",
    )
    args = ap.parse_args(argv)
    # as inference.json and evaluate.json run (both networks alike): freed memory kept for reuse; SEGONE_MALLOC=stock
    # in the environment times glibc's defaults
    keep_freed_memory()
    overrides = parse_overrides(args.set)
    try:
        variants = [parse_overrides(v.split(";")) for v in args.variant]
    except ValueError as err:
        ap.error(f"--variant: {err}")

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: no CUDA device is available")
    torch.manual_seed(0)
    if args.thick_slice_ratio > 0 and args.spacing is None:
        ap.error("--thick_slice_ratio needs --spacing")
    volume = torch.randn(1, 1, *args.shape, device=device)
    if args.spacing is not None:
        volume = MetaTensor(volume, affine=torch.diag(torch.tensor([*args.spacing, 1.0], dtype=torch.float64)))
    # the planned window is a multiple of --set's network's total downsampling (inference.json's window_multiple);
    # every network, the UNet and any --variant included, runs in that one window
    multiple = load_bundle_config("inference.json", overrides=overrides).get_parsed_content("window_multiple")
    inferers = {
        b: SpacingWindowInferer(
            (48, 64, 48),
            sw_batch_size=b,
            overlap=0.25,
            mode="gaussian",
            multiple=multiple,
            thick_ratio=args.thick_slice_ratio,
        )
        for b in args.sw_batch_size
    }
    roi = "x".join(map(str, inferers[args.sw_batch_size[0]].window_for(volume)))
    label = ", ".join(f"{k}={v}" for k, v in overrides.items())
    k = args.num_classes
    nets = {
        f"SegOne, {steps} DDIM step(s), {k} prompts"
        + (f" ({label})" if label else ""): segone(steps, Path(args.ckpt_path), overrides)
        for steps in args.steps
    }
    # the SegOne rows whose network takes the voxels' positions (coordinate_channels)
    positions = {name for name in nets if overrides.get("coordinate_channels")}
    for variant in variants:
        extra = ", ".join(f"{key}={value}" for key, value in {**overrides, **variant}.items())
        for steps in args.steps:
            name = f"SegOne, {steps} DDIM step(s), {k} prompts ({extra})"
            nets[name] = segone(steps, Path(args.ckpt_path), {**overrides, **variant})
            if {**overrides, **variant}.get("coordinate_channels"):
                positions.add(name)

    def _derive(name: str, derived: str, net: torch.nn.Module) -> None:
        nets[derived] = net
        if name in positions:  # a row derived from a network of positions runs on them too
            positions.add(derived)

    if args.head_in_order:
        for name in list(nets):
            _derive(name, f"{name}, head in order (bundle <= 0.17)", with_head_in_order(nets[name]))
    if args.encoder_per_prompt:
        for name in list(nets):
            _derive(name, f"{name}, encoder per prompt (bundle <= 0.9)", EncoderPerPrompt(nets[name]))
    nets[BASELINE] = baseline_unet(k)
    if args.basic_unet:
        nets["MONAI BasicUNet"] = BasicUNet(3, 1, k + 1).eval()
    nets = {name: net.to(device) for name, net in nets.items()}
    if args.compile:
        for name in list(nets):
            _derive(name, f"{name}, compiled", CompiledNetwork(nets[name]))

    def _finished(result: Any) -> Any:
        # CUDA calls return before the kernels finish: a timed call ends when the device does
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return result

    # a network of coordinate_channels takes the volume with its voxels' positions, appended before the windows as
    # inference.json's preprocessing does (untimed, as the rest of the preprocessing)
    with_positions = AddCoordinatesd("image")({"image": volume[0]})["image"][None]

    def _run(net: torch.nn.Module, inferer: SpacingWindowInferer, image: torch.Tensor) -> Callable[[], Any]:
        seg = net.network if isinstance(net, CompiledNetwork) else net
        seg = seg.segmenter if isinstance(seg, EncoderPerPrompt) else seg
        if not isinstance(seg, PromptedSegmenter):
            return lambda: _finished(inferer(image, net))
        # k prompts: the model's own, repeated when it has fewer (the cost does not depend on their values)
        own = seg.prompt_embeddings
        prompts = own[torch.arange(k) % own.shape[0]]
        return lambda: _finished(inferer(image, net, prompt_embeddings=prompts))

    def _row(name: str, b: int) -> str:
        return name if len(inferers) == 1 else f"{name}, {b} window(s) per call"

    windows = "/".join(map(str, args.sw_batch_size))
    print(
        f"\nvolume {'x'.join(map(str, args.shape))}, ROI {roi}, {windows} window(s) per call, "
        f"{args.repeats} interleaved rounds, device {device}\n"
    )
    print("| network | parameters | threads | median time / volume | p10-p90 | ratio to UNet |")
    print("|---|---:|---:|---:|---:|---:|")
    first_calls: list[str] = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        runs = {
            _row(name, b): _run(net, inferer, with_positions if name in positions else volume)
            for name, net in nets.items()
            for b, inferer in inferers.items()
        }
        with torch.no_grad():
            for name, run in runs.items():
                if name.endswith(", compiled") or ", compiled, " in name:
                    t0 = time.perf_counter()
                    run()  # compiles for this shape (and thread count); the rounds' warm-up call then reuses it
                    first_calls.append(f"- first call of {name}, {threads} thread(s): {time.perf_counter() - t0:.1f} s")
            times = interleaved_seconds(runs, args.repeats)
        unets = [n for n in nets if n.startswith(BASELINE)]
        base = min(statistics.median(times[_row(n, b)]) for n in unets for b in inferers)
        for name, net in nets.items():
            params = sum(p.numel() for p in net.parameters()) / 1e6
            for b in inferers:
                t = sorted(times[_row(name, b)])
                med = statistics.median(t)
                p10, p90 = t[int(0.1 * (len(t) - 1))], t[int(0.9 * (len(t) - 1))]
                print(
                    f"| {_row(name, b)} | {params:.2f} M | {threads} | {med * 1000:.0f} ms | "
                    f"{p10 * 1000:.0f}-{p90 * 1000:.0f} | x{med / base:.2f} |"
                )
    if first_calls:
        print("\n" + "\n".join(first_calls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
