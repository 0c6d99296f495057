#!/usr/bin/env python
"""Latency on a busy CPU: SegOne (PyTorch eager, onnxruntime fp32 and int8) against MONAI UNet, idle and contended.

One whole volume (default 48x64x48, the bundle's window: one forward pass, no sliding window), both class prompts,
at each ``--threads`` count, with the machine idle and with ``--competitors`` CPU-bound busy-loop processes
competing for the cores. The competitors are started once by this script and paused (SIGSTOP) in the idle rounds,
resumed (SIGCONT) in the contended ones, so the two states alternate in the same run. Every thread *policy* runs in
its own worker process, because OpenMP reads its settings when torch loads:

- ``stock``: the environment as given, ``torch.set_num_threads(n)``, onnxruntime's default session options with
  ``intra_op_num_threads=n`` (its threads spin while idle);
- ``bundle``: the bundle's thread defaults (``bundle.utils.threads``): ``OMP_WAIT_POLICY=PASSIVE`` in the worker's
  environment, ``set_inference_threads(n)`` before every call (``n`` is then the most threads used: fewer when the
  cores are busy), onnxruntime sessions from ``ort_session_options`` (no spinning), one per thread count the
  policy may pick;
- ``passive``: only ``OMP_WAIT_POLICY=PASSIVE`` and onnxruntime without spinning, ``n`` threads fixed, and
  ``adaptive``: only ``set_inference_threads(n)`` and the onnxruntime options, OpenMP as given (what a process
  gets that loaded torch before the bundle could set the environment, such as the MONAI Label server): to tell
  the parts of the fix apart;
- ``prompts``: ``bundle``, and SegOne's onnxruntime graphs at 2 or more threads run their prompts in parallel
  (``OnnxSegmenter(prompt_workers=n)``: one-prompt graph calls on ``n`` Python threads, one onnxruntime thread
  each, combined as the graph combines them).

Rounds are interleaved: each round runs every (policy, threads, model) cell once in the idle state and once under
contention, the cells in a shuffled order (seeded by the round), the policies in alternating order. The table
gives the median over ``--repeats`` rounds, the 10th-90th percentile range, and in each SegOne cell the ratio to
the UNet of the same runtime (PyTorch or onnxruntime), policy and state. The UNet is the model card's baseline
(``scripts/experiments/train_baseline.py``), untrained (timing does not depend on weights); SegOne is the network
``--config_file`` defines (default: the edge network, ``configs/edge.json`` over ``configs/inference.json``, with
``models/edge/model.pt``; ``--config_file inference.json`` for the full-width model).

The ONNX files come from ``--onnx_dir`` (``model.onnx``, ``model.int8.onnx`` and ``model.json`` as written by
``scripts/export_edge.py``); without it the edge export (``bundle.cli.export_edge.run_export``) of the same
network, with the same weights (the model timed in eager mode), is written to a
temporary folder first. The UNet is exported next to them with ``bundle.export.export_onnx``. ``--before_onnx_dir``
adds the graphs of a second export (e.g. an earlier version) as rows of their own, timed in the same rounds.

    python scripts/benchmarks/benchmark_edge.py --repeats 30
    python scripts/benchmarks/benchmark_edge.py --onnx_dir runs/edge --policies stock bundle --competitors 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MODELS = ["SegOne eager", "SegOne ORT fp32", "SegOne ORT int8", "UNet eager", "UNet ORT"]
POLICIES = ["stock", "passive", "adaptive", "bundle", "prompts"]
# the UNet each SegOne row is compared with: the same runtime
BASELINE = {
    "SegOne eager": "UNet eager",
    "SegOne ORT fp32": "UNet ORT",
    "SegOne ORT int8": "UNet ORT",
    "SegOne ORT fp32, --before_onnx_dir": "UNet ORT",
    "SegOne ORT int8, --before_onnx_dir": "UNet ORT",
}
ONNX_FILES = {
    "SegOne ORT fp32": "model.onnx",
    "SegOne ORT int8": "model.int8.onnx",
    "UNet ORT": "unet.onnx",
    "SegOne ORT fp32, --before_onnx_dir": "before.onnx",
    "SegOne ORT int8, --before_onnx_dir": "before.int8.onnx",
}
BUSY_LOOP = "import signal, sys\nsignal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\nwhile True:\n    pass\n"


# ---------------------------------------------------------------------------------------------------- exports


def build_segone(ckpt_path: str | None, config_file: str) -> Any:
    """The inference network the bundle configs define, with the model's weights.

    Args:
        ckpt_path: the model file (default: the configs' ``ckpt_path``).
        config_file: comma-separated configs in ``configs/``, merged left to right (``inference.json,edge.json``).

    Returns:
        The :class:`~bundle.diffusion.PromptedSegmenter`, in eval mode.
    """
    from bundle.utils.checkpoint import load_weights
    from bundle.utils.config import load_bundle_config

    parser = load_bundle_config(*config_file.split(","))
    path = ckpt_path or parser.get_parsed_content("ckpt_path")
    return load_weights(parser.get_parsed_content("network_def"), path).eval()


def build_unet() -> Any:
    """The model card's baseline: MONAI UNet, channels 16-256, 2 residual units, 3 classes (untrained).

    Returns:
        The network, in eval mode.
    """
    from monai.networks.nets import UNet

    return UNet(3, 1, 3, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2).eval()


def export_segone_onnx(out_dir: Path, ckpt_path: str | None, config_file: str, calibration_cases: int) -> None:
    """Write ``model.onnx``, ``model.int8.onnx`` and ``model.json`` of the timed network into ``out_dir``.

    The edge export (``bundle.cli.export_edge.run_export``, as ``scripts/export_edge.py``) of the network the
    configs define, with the weights timed in eager mode.

    Args:
        out_dir: destination folder.
        ckpt_path: the model file (default: the configs' ``ckpt_path``).
        config_file: comma-separated configs in ``configs/``, merged left to right.
        calibration_cases: training cases that calibrate the int8 model (the edge export's default data set).
    """
    from bundle.cli.export_edge import run_export

    run_export(out_dir, tuple(config_file.split(",")), ckpt_path=ckpt_path, calibration_cases=calibration_cases)


def export_unet_onnx(path: Path, shape: Sequence[int]) -> None:
    """Write the baseline UNet as ONNX (``bundle.export.export_onnx``, dynamic spatial sizes, multiples of 16).

    Args:
        path: destination ``.onnx`` file.
        shape: spatial size of the example input.
    """
    import torch

    from bundle.export import export_onnx

    torch.manual_seed(0)
    export_onnx(build_unet(), path, (torch.randn(1, 1, *shape),), size_divisor=16)


# ---------------------------------------------------------------------------------------------------- worker


class _Worker:
    """Everything one policy's process runs: models loaded once, one call per (model, threads) per command."""

    def __init__(self, policy: str, models: Sequence[str], threads: Sequence[int], onnx_dir: Path, args: Any) -> None:
        import numpy as np
        import torch

        from bundle.utils import threads as bt

        self.policy = policy
        self.models = list(models)
        self.threads = list(threads)
        self.bt = bt
        torch.manual_seed(0)
        self.image = torch.randn(1, 1, *args.shape)
        self.eager: dict[str, Any] = {}
        if "SegOne eager" in self.models:
            self.eager["SegOne eager"] = build_segone(args.ckpt_path, args.config_file)
        if "UNet eager" in self.models:
            self.eager["UNet eager"] = build_unet()
        self.sessions: dict[tuple[str, int], Any] = {}
        self.feeds: dict[str, dict[str, Any]] = {}
        # the bundle policy may pick fewer threads than asked: a session for every count it may pick
        counts = sorted(
            {n for t in self.threads for n in range(1, t + 1)}
            if policy in ("bundle", "adaptive", "prompts")
            else set(threads)
        )
        self.segmenters: dict[tuple[str, int], Any] = {}
        for name in self.models:
            if name not in ONNX_FILES:
                continue
            for n in counts:
                self.sessions[(name, n)] = self._session(onnx_dir / ONNX_FILES[name], n)
                if policy == "prompts" and name.startswith("SegOne ORT") and n > 1:
                    from bundle.inference import OnnxSegmenter

                    self.segmenters[(name, n)] = OnnxSegmenter(onnx_dir / ONNX_FILES[name], prompt_workers=n)
            inputs = [i.name for i in self.sessions[(name, counts[0])].get_inputs()]
            feed = {inputs[0]: self.image.numpy()}
            if len(inputs) > 1:
                feed[inputs[1]] = np.eye(self._prompts(onnx_dir), dtype=np.float32)
            self.feeds[name] = feed
        self.used: dict[str, list[int]] = {}
        for _ in range(2):  # warm-up, every cell
            self.run("idle")

    def _prompts(self, onnx_dir: Path) -> int:
        manifest = onnx_dir / "model.json"
        if manifest.is_file():
            info = json.loads(manifest.read_text())
            for key in ("prompts", "classes", "class_names"):
                if isinstance(info.get(key), list) and info[key]:
                    return len(info[key])
        return 2

    def _session(self, path: Path, n: int) -> Any:
        import onnxruntime as ort

        if self.policy == "stock":
            options = ort.SessionOptions()
            options.intra_op_num_threads = n
        else:
            options = self.bt.ort_session_options(n)
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def _call(self, name: str, threads: int) -> tuple[float, int]:
        import torch

        if self.policy in ("bundle", "adaptive", "prompts"):
            n = self.bt.set_inference_threads(threads)
        else:
            n = threads
            torch.set_num_threads(threads)
        if name in self.eager:
            with torch.no_grad():
                t0 = time.perf_counter()
                self.eager[name](self.image)
                return time.perf_counter() - t0, n
        if (name, n) in self.segmenters:
            t0 = time.perf_counter()
            self.segmenters[(name, n)](self.image)
            return time.perf_counter() - t0, n
        session = self.sessions[(name, n)]
        t0 = time.perf_counter()
        session.run(None, self.feeds[name])
        return time.perf_counter() - t0, n

    def run(self, state: str) -> dict[str, float]:
        cells = [(name, t) for t in self.threads for name in self.models]
        random.shuffle(cells)
        out = {}
        for name, t in cells:
            seconds, n = self._call(name, t)
            out[f"{name}|{t}|{state}"] = seconds * 1000.0
            out[f"{name}|{t}|{state}|threads"] = n
        return out


def _worker_main(args: Any) -> int:
    worker = _Worker(args.policy, args.models, args.threads, Path(args.onnx_dir), args)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for line in sys.stdin:
        command = line.strip()
        if command == "quit":
            break
        random.seed(command)
        sys.stdout.write(json.dumps(worker.run(command.split()[0])) + "\n")
        sys.stdout.flush()
    return 0


# ---------------------------------------------------------------------------------------------------- driver


def _start_worker(policy: str, onnx_dir: Path, args: Any) -> subprocess.Popen:
    from bundle.utils.threads import thread_env

    env = dict(os.environ)
    if policy in ("bundle", "passive", "prompts"):
        env = thread_env(env)
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--_worker",
        "--policy",
        policy,
        "--onnx_dir",
        str(onnx_dir),
    ]
    command += ["--shape", *map(str, args.shape), "--threads", *map(str, args.threads), "--models", *args.models]
    command += ["--config_file", args.config_file]
    if args.ckpt_path:
        command += ["--ckpt_path", args.ckpt_path]
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True, bufsize=1)


def _read_line(proc: subprocess.Popen, what: str) -> str:
    line = proc.stdout.readline() if proc.stdout is not None else ""
    if not line:
        raise RuntimeError(f"benchmark worker ({what}) exited with status {proc.wait()}")
    return line


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def measure(args: Any, onnx_dir: Path) -> dict[str, dict[str, list[float]]]:
    """Start the workers and the competitors, run the interleaved rounds, stop everything.

    Args:
        args: the parsed options.
        onnx_dir: folder holding the ONNX files.

    Returns:
        ``{policy: {"model|threads|state": [ms, ...], "model|threads|state|threads": [threads used, ...]}}``.
    """
    workers: dict[str, subprocess.Popen] = {}
    competitors: list[subprocess.Popen] = []
    results: dict[str, dict[str, list[float]]] = {p: {} for p in args.policies}
    try:
        for policy in args.policies:  # one at a time: loading competes with nothing
            workers[policy] = _start_worker(policy, onnx_dir, args)
            if _read_line(workers[policy], policy).strip() != "ready":
                raise RuntimeError(f"benchmark worker ({policy}) did not start")
        for _ in range(args.competitors):
            proc = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
            competitors.append(proc)
        time.sleep(0.3)
        for proc in competitors:
            os.kill(proc.pid, signal.SIGSTOP)
        states = ["idle", "busy"] if args.competitors > 0 else ["idle"]
        for r in range(args.repeats):
            sys.stderr.write(f"round {r + 1}/{args.repeats}\n")
            order = states if r % 2 == 0 else states[::-1]
            for state in order:
                for proc in competitors:
                    os.kill(proc.pid, signal.SIGCONT if state == "busy" else signal.SIGSTOP)
                time.sleep(args.settle)
                policies = list(args.policies) if r % 2 == 0 else list(args.policies)[::-1]
                for policy in policies:
                    proc = workers[policy]
                    assert proc.stdin is not None
                    time.sleep(0.01)  # the previous worker's idle OpenMP threads stop spinning
                    proc.stdin.write(f"{state} {r}\n")
                    proc.stdin.flush()
                    for key, value in json.loads(_read_line(proc, policy)).items():
                        results[policy].setdefault(key, []).append(value)
    finally:
        for proc in competitors:
            try:
                os.kill(proc.pid, signal.SIGCONT)
                proc.terminate()
                proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
        for proc in workers.values():
            try:
                if proc.stdin is not None:
                    proc.stdin.write("quit\n")
                    proc.stdin.close()
                proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
    return results


def table(results: dict[str, dict[str, list[float]]], args: Any) -> str:
    """The Markdown table: one row per (model, policy), one column per (threads, state).

    Args:
        results: as returned by :func:`measure`.
        args: the parsed options.

    Returns:
        The table, with a header line saying what was measured.
    """
    states = ["idle", "busy"] if args.competitors > 0 else ["idle"]
    columns = [(t, s) for t in args.threads for s in states]
    label = {"idle": "idle", "busy": f"{args.competitors} competing"}
    lines = [
        f"volume 1x1x{'x'.join(map(str, args.shape))}, both classes, median [p10-p90] ms over {args.repeats} "
        f"interleaved rounds; x = ratio to the UNet of the same runtime, policy and state (< 1: SegOne faster); "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "",
        "| model | policy | " + " | ".join(f"{t} thread{'s' if t > 1 else ''}, {label[s]}" for t, s in columns) + " |",
        "|---|---|" + "---:|" * len(columns),
    ]
    for name in args.models:
        for policy in args.policies:
            cells = []
            for t, s in columns:
                values = results[policy].get(f"{name}|{t}|{s}")
                if not values:
                    cells.append("-")
                    continue
                median = statistics.median(values)
                cell = f"{median:.0f} [{_percentile(values, 0.1):.0f}-{_percentile(values, 0.9):.0f}]"
                base = results[policy].get(f"{BASELINE.get(name, '')}|{t}|{s}")
                if base:
                    cell += f" x{median / statistics.median(base):.2f}"
                used = results[policy].get(f"{name}|{t}|{s}|threads", [])
                if used and (min(used) != t or max(used) != t):
                    cell += f" ({min(used):.0f}-{max(used):.0f} thr)"
                cells.append(cell)
            lines.append(f"| {name} | {policy} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=20, help="interleaved rounds (each: every cell once per state)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="intra-op thread counts")
    ap.add_argument(
        "--competitors",
        type=int,
        default=2,
        help="CPU-bound busy-loop processes in the contended state (default %(default)s, as in issue #17; 0: idle only)",
    )
    ap.add_argument("--policies", nargs="+", default=["stock", "bundle"], choices=POLICIES, help="thread policies")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(ONNX_FILES) + MODELS, help="models")
    ap.add_argument("--onnx_dir", default=None, help="edge export folder (model.onnx, model.int8.onnx, model.json)")
    ap.add_argument(
        "--before_onnx_dir",
        default=None,
        help="a second edge export (e.g. of an earlier version) timed in the same run, in rows of its own",
    )
    ap.add_argument(
        "--config_file",
        default="inference.json,edge.json",
        help="comma-separated configs in configs/ defining SegOne (default: the edge network, as the edge export)",
    )
    ap.add_argument("--ckpt_path", default=None, help="SegOne model file (default: the configs' ckpt_path)")
    ap.add_argument("--shape", type=int, nargs=3, default=[48, 64, 48], help="volume size (the bundle's window)")
    ap.add_argument(
        "--calibration_cases", type=int, default=4, help="int8 calibration cases when exporting (no --onnx_dir)"
    )
    ap.add_argument("--settle", type=float, default=0.2, help="seconds after pausing or resuming the competitors")
    ap.add_argument("--output_file", default=None, help="also write the table to this file")
    ap.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--policy", default="stock", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.models = list(dict.fromkeys(args.models))
    if args._worker:
        return _worker_main(args)
    if args.repeats < 1 or min(args.threads) < 1 or args.competitors < 0:
        ap.error("--repeats and --threads must be >= 1, --competitors >= 0")

    with tempfile.TemporaryDirectory(prefix="benchmark_edge_") as tmp:
        work = Path(tmp)
        onnx_models = [m for m in args.models if m in ONNX_FILES and m != "UNet ORT"]
        if args.onnx_dir:
            onnx_dir = Path(args.onnx_dir)
            for name in onnx_models:
                if not (onnx_dir / ONNX_FILES[name]).is_file():
                    ap.error(f"--onnx_dir {onnx_dir}: no {ONNX_FILES[name]}")
            if "UNet ORT" in args.models:  # the UNet goes next to the SegOne files, in a folder of our own
                for name in onnx_models + ["model.json", "UNet ORT"]:
                    src = onnx_dir / ONNX_FILES.get(name, name)
                    if src.is_file():
                        (work / src.name).symlink_to(src.resolve())
                onnx_dir = work
        else:
            onnx_dir = work
            if onnx_models:
                sys.stderr.write("exporting SegOne to ONNX (fp32, int8) ...\n")
                export_segone_onnx(work, args.ckpt_path, args.config_file, args.calibration_cases)
        if "UNet ORT" in args.models and not (onnx_dir / ONNX_FILES["UNet ORT"]).exists():
            sys.stderr.write("exporting the UNet to ONNX ...\n")
            export_unet_onnx(onnx_dir / ONNX_FILES["UNet ORT"], args.shape)
        if args.before_onnx_dir:
            if onnx_dir != work:
                for name in ("model.onnx", "model.int8.onnx", "model.json"):
                    if (onnx_dir / name).is_file():
                        (work / name).symlink_to((onnx_dir / name).resolve())
                if (onnx_dir / ONNX_FILES["UNet ORT"]).is_file():
                    (work / ONNX_FILES["UNet ORT"]).symlink_to((onnx_dir / ONNX_FILES["UNet ORT"]).resolve())
                onnx_dir = work
            for kind, name in (("fp32", "model.onnx"), ("int8", "model.int8.onnx")):
                src = Path(args.before_onnx_dir) / name
                if src.is_file() and f"SegOne ORT {kind}" in args.models:
                    (work / ONNX_FILES[f"SegOne ORT {kind}, --before_onnx_dir"]).symlink_to(src.resolve())
                    args.models.insert(
                        args.models.index(f"SegOne ORT {kind}") + 1, f"SegOne ORT {kind}, --before_onnx_dir"
                    )
        results = measure(args, onnx_dir)
    text = table(results, args)
    sys.stdout.write("\n" + text + "\n")
    if args.output_file:
        Path(args.output_file).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
