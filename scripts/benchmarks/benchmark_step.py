#!/usr/bin/env python
"""The same training step or inference call under two settings, for training and inference, in one interleaved run.

Comparisons (``--compare``):

- ``malloc``: glibc's ``stock`` ``malloc`` against ``kept``, :func:`bundle.utils.keep_freed_memory` (bundle 0.13.0);
- ``bias``: the bias of every kernel-size-1 convolution that feeds an instance norm ``added``, as before bundle
  0.14.0, against ``skipped`` (:func:`bundle.networks.blocks.skip_bias_before`: the norm removes it anyway); both with
  kept memory, as every workflow runs;
- ``mask_input``: the denoiser's noisy-mask channel enters at the ``encoder`` (with the image, as up to bundle
  0.14.0) against the ``decoder`` (``decoder_inputs: [0]``): the encoder then sees the image alone, and training
  encodes each image once for all its prompts (``SegOne.forward_shared_image``); kept memory, biases skipped.
- ``compile``: ``eager`` mode against ``compiled`` (``torch.compile``, inductor; the first, compiling call is the
  worker's untimed warm-up): the network of each case, the UNet's training step included (bundle 0.19.0's
  ``compile`` switch of inference.json; training keeps eager mode);
- ``metadata``: the training step's inputs as the data loader collates them, MONAI ``MetaTensor`` s (as up to
  bundle 0.20.0), against ``plain`` tensors (``DiffusionPrepareBatch`` and ``train_baseline.py`` convert them since
  0.21.0): a MetaTensor routes each operation of the forward pass through ``__torch_function__``; the training
  cases only, the UNet's included;
- ``tree``: the same cases in two checkouts of the project: ``baseline`` (``--baseline DIR``, e.g. a
  ``git worktree`` of the last release) against ``this tree``, to time a change of the code itself; kept memory;
- ``config``: the configs as they are (``inference.json``) against the ``--set`` overrides (any keys of
  inference.json that train.json takes over too), e.g. a narrower first level (``--set features=[16,64,128,256]``)
  or a second shift-and-mix block at the finest decoder level (``--set decoder_blocks=[2,1,1]``).

Cases (``--cases``):

- ``SegOne training``: what ``configs/train.json`` runs per iteration with the shipped recipe: the MaskDiffusion
  objective (``all_prompts``: a batch of 4 images with 2 prompts each, the competition term; 48x64x48 windows),
  backward and an AdamW update;
- ``UNet training``: the MONAI UNet baseline's step (``scripts/experiments/train_baseline.py``: Dice +
  cross-entropy, 3 classes, batch 4); only ``--compare malloc``, ``compile`` and ``metadata`` run it (it has no
  SegOne bias, mask input or config; the others refuse it);
- ``SegOne inference, 4 windows x 3 prompts`` and ``SegOne inference, 1 window x 12 prompts``: the denoiser's first
  sampling step (``SegOne.forward_prompts``, every prompt of a window after one encoder pass) as a sliding window
  with ``sw_batch_size`` 4 on a 3-structure volume, or a 12-structure vocabulary on one window, runs it.

``malloc`` settings hold for a whole process, so each (case, setting) pair runs in its own worker process, and the
workers take turns, one call each per round in a rotating order, so that a change in the machine's load hits every
row alike. The table gives the median call, the peak resident memory, and the ratio of each call to the first
setting's call of the same case in the same run.

    python scripts/benchmarks/benchmark_step.py --compare malloc --threads 1 2 --repeats 10
    python scripts/benchmarks/benchmark_step.py --compare bias --threads 1 2 --repeats 10
    python scripts/benchmarks/benchmark_step.py --compare mask_input --threads 1 --repeats 10
    python scripts/benchmarks/benchmark_step.py --compare compile --threads 1 2 --repeats 10
    python scripts/benchmarks/benchmark_step.py --compare metadata --threads 1 2 --repeats 10
    git worktree add /tmp/segone-base HEAD~1
    python scripts/benchmarks/benchmark_step.py --compare tree --baseline /tmp/segone-base --threads 1 2
    python scripts/benchmarks/benchmark_step.py --compare config --set "features=[16,64,128,256]" --threads 1 2
    python scripts/benchmarks/benchmark_step.py --compare config --set "decoder_blocks=[2,1,1]" --threads 1 --repeats 8
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections.abc import Sequence

SETTINGS = {
    "malloc": ("stock", "kept"),
    "bias": ("added", "skipped"),
    "mask_input": ("encoder", "decoder"),
    "config": ("inference.json", "--set"),
    "compile": ("eager", "compiled"),
    "metadata": ("MetaTensor", "plain"),
    "tree": ("baseline", "this tree"),
}
CASES = (
    "SegOne training",
    "UNet training",
    "SegOne inference, 4 windows x 3 prompts",
    "SegOne inference, 1 window x 12 prompts",
)


def _inference_function(
    windows: int, prompts: int, add_skipped_biases: bool = False, overrides=None, compiled: bool = False
):
    """A closure running inference.json's denoiser (with ``overrides``; through ``torch.compile`` when
    ``compiled``) once over ``windows`` windows with ``prompts`` prompts each."""
    import torch

    from bundle.utils.config import load_bundle_config

    parser = load_bundle_config("inference.json", overrides=overrides)
    denoiser = parser.get_parsed_content("denoiser_def").eval()
    if add_skipped_biases:
        _add_skipped_biases(denoiser)
    # parsed, not raw: a value may be an expression (in_channels counts the positions when they are switched on)
    value = parser.get_parsed_content
    image = torch.randn(windows, value("denoiser_def#in_channels"), *value("roi_size"))
    timesteps = torch.full((windows * prompts,), value("num_train_timesteps") - 1)
    context = torch.randn(windows * prompts, value("text_dim"))

    forward_prompts = torch.compile(denoiser.forward_prompts) if compiled else denoiser.forward_prompts

    def call() -> None:
        with torch.inference_mode():
            forward_prompts(image, timesteps, context, prompts)

    return call


def _step_function(network: str, compare: str = "", setting: str = "", overrides: dict | None = None):
    """A closure running one training step (``SegOne training``, ``UNet training``) on fixed random data, or one
    inference call (the ``SegOne inference`` cases), in the ``setting`` of ``compare`` (a :data:`SETTINGS` pair;
    empty: the configs as they are; ``overrides``: the ``--set`` options of ``config``)."""
    import torch

    torch.manual_seed(0)
    add_skipped_biases = (compare, setting) == ("bias", "added")
    as_collated = _as_collated if (compare, setting) == ("metadata", "MetaTensor") else (lambda tensor: tensor)
    network_overrides = _network_overrides(compare, setting, overrides)
    compiled = (compare, setting) == ("compile", "compiled")
    if network.startswith("SegOne inference"):
        windows, prompts = (4, 3) if "4 windows" in network else (1, 12)
        return _inference_function(windows, prompts, add_skipped_biases, network_overrides, compiled)
    if network == "SegOne training":
        from bundle.utils.config import load_bundle_config

        overrides = {
            "text_dim": 512,
            "network_def#prompt_embeddings": None,
            "all_prompts": True,
            "diffusion#competition_weight": 1.0,
            **network_overrides,
        }
        model = load_bundle_config("train.json", overrides=overrides).get_parsed_content("network_def")
        if add_skipped_biases:
            _add_skipped_biases(model)
        b, k = 4, 2
        image = as_collated(torch.randn(b, 1, 48, 64, 48))
        classes = torch.randint(0, k + 1, (b, 1, 48, 64, 48))
        target = as_collated(torch.cat([(classes == c + 1).float() for c in range(k)], dim=1))
        context = as_collated(torch.randn(b, k, 512))

        forward = torch.compile(model) if compiled else model

        def loss() -> torch.Tensor:
            return forward(image, target, context)["loss"]

    else:
        from monai.losses import DiceCELoss
        from monai.networks.nets import UNet

        model = UNet(3, 1, 3, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2)
        criterion = DiceCELoss(to_onehot_y=True, softmax=True)
        image = as_collated(torch.randn(4, 1, 48, 64, 48))
        label = as_collated(torch.randint(0, 3, (4, 1, 48, 64, 48)))

        forward = torch.compile(model) if compiled else model

        def loss() -> torch.Tensor:
            return criterion(forward(image), label)

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss().backward()
        optimizer.step()

    return step


def _as_collated(tensor):
    """``tensor`` as a MONAI ``DataLoader`` collates a ``CacheDataset``'s items: a ``MetaTensor`` with an affine."""
    import torch
    from monai.data import MetaTensor

    return MetaTensor(tensor, affine=torch.eye(4, dtype=torch.float64))


def _network_overrides(compare: str, setting: str, overrides: dict | None = None) -> dict:
    """The config overrides of a setting: for ``mask_input``, where the denoiser's noisy mask enters; for ``config``,
    ``overrides`` (the ``--set`` options) in its second setting."""
    if compare == "config":
        return dict(overrides or {}) if setting == "--set" else {}
    if compare == "mask_input":
        return {"decoder_inputs": [0] if setting == "decoder" else []}
    return {}


def _add_skipped_biases(module) -> None:
    """Undo :func:`bundle.networks.blocks.skip_bias_before` everywhere in ``module``: the step as before 0.14.0."""
    for m in module.modules():
        if getattr(m, "skip_bias", False):
            m.skip_bias = False
            m.bias.requires_grad_(True)


def _import_bundle_from(tree: str) -> None:
    """Import the ``bundle`` package (code and configs) of the checkout at ``tree`` in this process, in place of the
    installed one: the package is loaded from its file (importlib's recipe for importing a source file directly),
    and its submodules follow its ``__path__``. Call it before anything imports ``bundle``."""
    import importlib.util

    package = os.path.join(os.path.abspath(tree), "bundle")
    if "bundle" in sys.modules:
        raise RuntimeError("bundle is already imported in this worker: cannot load the baseline's")
    spec = importlib.util.spec_from_file_location(
        "bundle", os.path.join(package, "__init__.py"), submodule_search_locations=[package]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["bundle"] = module
    spec.loader.exec_module(module)
    from bundle.utils import config

    if not os.path.abspath(config.__file__).startswith(package + os.sep):
        raise RuntimeError(f"the baseline worker imported bundle.utils from {config.__file__}, not from {tree}")


def _worker(
    network: str, compare: str, setting: str, threads: int, conn, overrides: dict | None = None, baseline: str = ""
) -> None:
    """Builds the step, then runs and times one step per request; replies with seconds and peak RSS (MiB). The
    ``baseline`` setting of ``tree`` imports ``bundle`` (code and configs) from the checkout at ``baseline``."""
    import resource

    if compare == "tree" and setting == "baseline":
        _import_bundle_from(baseline)

    os.environ["SEGONE_MALLOC"] = setting if compare == "malloc" else "kept"
    from bundle.utils.memory import keep_freed_memory

    applied = keep_freed_memory()
    import torch

    torch.set_num_threads(threads)
    step = _step_function(network, compare, setting, overrides)
    step()  # warm-up: first-touch allocations and lazy initialisation
    conn.send(("ready", applied))
    while conn.recv() == "step":
        t0 = time.perf_counter()
        step()
        conn.send((time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    conn.close()


def measure(
    threads: int,
    repeats: int,
    networks: Sequence[str],
    compare: str = "malloc",
    overrides: dict | None = None,
    baseline: str = "",
) -> list[dict]:
    """Interleaved steps of every (network, setting) worker; one row per pair."""
    settings = SETTINGS[compare]
    ctx = mp.get_context("spawn")
    workers = {}
    for network in networks:
        for setting in settings:
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_worker, args=(network, compare, setting, threads, child, overrides, baseline), daemon=True
            )
            proc.start()
            workers[(network, setting)] = (proc, parent)
    applied = {}
    for key, (_, conn) in workers.items():
        status, applied[key] = conn.recv()
        if not applied[key] and (compare != "malloc" or key[1] == "kept"):
            raise RuntimeError("keep_freed_memory() did not apply here (not glibc?): nothing to compare")
    times: dict[tuple[str, str], list[float]] = {key: [] for key in workers}
    rss: dict[tuple[str, str], float] = {}
    keys = list(workers)
    for r in range(repeats):
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
            conn = workers[key][1]
            conn.send("step")
            seconds, rss[key] = conn.recv()
            times[key].append(seconds)
    for proc, conn in workers.values():
        conn.send("stop")
        proc.join(timeout=60)
    rows = []
    for network, setting in keys:
        median = statistics.median(times[(network, setting)])
        first = statistics.median(times[(network, settings[0])])
        rows.append(
            {
                "threads": threads,
                "network": network,
                "setting": setting,
                "step_ms": 1000 * median,
                "peak_rss_mib": rss[(network, setting)],
                "ratio": median / first,
            }
        )
    return rows


def chosen_cases(compare: str, cases: Sequence[str] | None = None) -> list[str]:
    """The cases that ``--compare compare`` times: ``cases`` if given, else every case the comparison applies to.

    Args:
        compare: a key of ``SETTINGS``.
        cases: the ``--cases`` given, or None.

    Returns:
        The cases, in ``CASES`` order when defaulted.

    Raises:
        ValueError: a case the comparison does not apply to: an inference case for ``metadata`` (the inferer hands
            the network plain tensors), the UNet's step for a comparison of SegOne's network or code.
    """
    if compare == "metadata":
        chosen = list(cases or [c for c in CASES if c.endswith("training")])
        if any(not c.endswith("training") for c in chosen):
            raise ValueError("--compare metadata times training steps: the inferer hands the network plain tensors")
        return chosen
    applies = [c for c in CASES if compare in ("malloc", "compile") or not c.startswith("UNet")]
    chosen = list(cases or applies)
    if any(c not in applies for c in chosen):
        raise ValueError(f"--compare {compare} changes SegOne's network or code, not the UNet baseline's step")
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    # imported here, not at the top: the spawned workers import this module and must set up malloc before torch loads
    from bundle.utils.cli import add_override_option, parse_overrides

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compare", choices=sorted(SETTINGS), default="malloc", help="the two settings to compare")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts, one table each")
    ap.add_argument("--repeats", type=int, default=10, help="interleaved timed rounds (the median is reported)")
    ap.add_argument("--cases", nargs="+", default=None, choices=CASES, help="what to time (default: all that apply)")
    add_override_option(
        ap, "--set", "with --compare config: the second setting's override, e.g. decoder_blocks=[2,1,1]"
    )
    ap.add_argument("--baseline", default="", help="with --compare tree: the checkout to time against this one")
    args = ap.parse_args(argv)
    if not sys.platform.startswith("linux"):
        ap.error("the malloc settings are glibc's: Linux only")
    if (args.compare == "config") != bool(args.set):
        ap.error("--set goes with --compare config, which needs at least one --set")
    if (args.compare == "tree") != bool(args.baseline):
        ap.error("--baseline goes with --compare tree, which needs it")
    if args.baseline and not os.path.isdir(os.path.join(args.baseline, "bundle")):
        ap.error(f"--baseline {args.baseline}: no bundle/ package there")
    try:
        overrides = parse_overrides(args.set)
    except ValueError as err:
        ap.error(str(err))
    if overrides:
        print("overrides: " + ", ".join(f"{k}={v}" for k, v in overrides.items()))
    try:
        cases = chosen_cases(args.compare, args.cases)
    except ValueError as err:
        ap.error(str(err))
    if args.baseline:
        print(f"baseline: {os.path.abspath(args.baseline)}")
    first = SETTINGS[args.compare][0]
    print(f"| threads | case | {args.compare} | call (median) | peak RSS | call / {first} |")
    print("|---:|---|---|---:|---:|---:|")
    for threads in args.threads:
        for row in measure(threads, args.repeats, cases, args.compare, overrides, args.baseline):
            print(
                f"| {row['threads']} | {row['network']} | {row['setting']} | {row['step_ms']:.0f} ms "
                f"| {row['peak_rss_mib']:.0f} MiB | x{row['ratio']:.2f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
