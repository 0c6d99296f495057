"""CPU thread defaults for inference that hold up when other processes compete for the cores.

SegOne's forward pass is a few hundred short operations (1x1 convolutions, norms, activations, shuffles, shifts),
and PyTorch runs each one that is large enough as an OpenMP parallel region that ends in a barrier. On an idle
machine that costs microseconds. When other processes keep the cores busy, a thread of the region is often not
running when the others reach the barrier, and the region lasts until the scheduler gets round to it. By default
GNU OpenMP also lets idle worker threads spin between regions; the kernel then sees them as CPU-bound and gives them
no wake-up preference. Measured on 2 cores with two busy competitors (docs/benchmarks.md, "Latency on a busy CPU"),
the sampler took about 30x its idle time at 2 threads with the stock settings. onnxruntime's own intra-op thread
pool spins in the same way unless told not to.

The defaults here:

- :data:`THREAD_ENV` (``OMP_WAIT_POLICY=PASSIVE``: OpenMP workers sleep at once instead of spinning). OpenMP reads
  it when its library loads, that is when ``torch`` is first imported: :func:`apply_thread_env` sets it in
  ``os.environ`` and works only before that; :func:`thread_env` gives an environment for a child process.
  Values already set by the user are kept.
- :func:`inference_threads`: the intra-op threads for the next inference, ``min(requested, free cores)`` where the
  free cores are the process's CPUs less the other runnable tasks sampled from ``/proc/loadavg`` (an
  instantaneous count, not the 1-minute average), at least 1. :func:`set_inference_threads` applies it to torch;
  call it before each inference (it costs about a millisecond).
- :func:`ort_session_options`: onnxruntime options with ``intra_op_num_threads`` and no spinning.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "THREAD_ENV",
    "apply_thread_env",
    "available_cpus",
    "inference_threads",
    "ort_session_options",
    "other_runnable_tasks",
    "set_inference_threads",
    "thread_env",
]

logger = logging.getLogger(__name__)

# read by the OpenMP runtime when it loads (GNU libgomp: OMP_WAIT_POLICY; LLVM/Intel: also KMP_BLOCKTIME)
THREAD_ENV: dict[str, str] = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}

_LOADAVG = Path("/proc/loadavg")


def thread_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment with the bundle's OpenMP defaults, for a child process that will import torch.

    Args:
        environ: the environment to start from (default ``os.environ``); variables it already sets are kept.

    Returns:
        A new dict: ``environ`` with every :data:`THREAD_ENV` variable it lacks added.
    """
    env = dict(os.environ if environ is None else environ)
    for key, value in THREAD_ENV.items():
        env.setdefault(key, value)
    return env


def apply_thread_env() -> bool:
    """Set :data:`THREAD_ENV` in ``os.environ`` (keeping values already set), effective only before torch loads.

    Call it at the very start of a command, before anything imports ``torch``.

    Returns:
        True when torch had not been imported yet (the settings take effect), False otherwise (they are still set,
        for child processes, and a debug message says they come too late for this one).
    """
    for key, value in THREAD_ENV.items():
        os.environ.setdefault(key, value)
    if "torch" in sys.modules:
        logger.debug("torch is already imported: %s take effect in child processes only", sorted(THREAD_ENV))
        return False
    return True


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the platform has one).

    Returns:
        The number of usable CPUs, at least 1.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def other_runnable_tasks(samples: int = 5, interval: float = 0.0005, loadavg_text: str | None = None) -> float | None:
    """Runnable tasks on the machine other than the caller, averaged over a few instantaneous samples.

    Reads the ``running/total`` field of ``/proc/loadavg`` (Linux), which counts the caller itself: one is taken
    off each sample.

    Args:
        samples: how many times to read it.
        interval: seconds between reads.
        loadavg_text: a ``/proc/loadavg`` line to parse instead of reading the file (tests); one sample.

    Returns:
        The mean number of other runnable tasks, or None where ``/proc/loadavg`` cannot be read or parsed.
    """
    counts: list[int] = []
    for i in range(1 if loadavg_text is not None else max(1, samples)):
        try:
            text = loadavg_text if loadavg_text is not None else _LOADAVG.read_text()
            counts.append(max(0, int(text.split()[3].split("/")[0]) - 1))
        except (OSError, IndexError, ValueError):
            return None
        if loadavg_text is None and i + 1 < samples:
            time.sleep(interval)
    return sum(counts) / len(counts)


def inference_threads(
    requested: int | None = None, cpus: int | None = None, busy: float | None = None, online: int | None = None
) -> int:
    """The intra-op thread count for the next inference: the requested count, capped by the cores that are free.

    Free cores: ``online - busy``, rounded, where ``busy`` counts the other runnable tasks; never more than the
    process's own CPUs. On an idle machine this is ``min(requested, cpus)``; with as many busy processes as cores
    it is 1, because there a single thread, which never waits at a barrier for a descheduled partner, is faster.

    Args:
        requested: the most threads to use (default: all of ``cpus``).
        cpus: CPUs the process may use (default :func:`available_cpus`).
        busy: other runnable tasks (default :func:`other_runnable_tasks`; unknown counts as none).
        online: CPUs of the whole machine the busy tasks share (default ``os.cpu_count()``, at least ``cpus``).

    Returns:
        A thread count, at least 1.
    """
    cpus = available_cpus() if cpus is None else max(1, int(cpus))
    limit = cpus if requested is None else max(1, min(int(requested), cpus))
    if busy is None:
        busy = other_runnable_tasks() or 0.0
    online = max(cpus, os.cpu_count() or cpus) if online is None else max(cpus, int(online))
    free = int(online - busy + 0.5)
    return max(1, min(limit, free))


def set_inference_threads(requested: int | None = None) -> int:
    """Set torch's intra-op threads to :func:`inference_threads` for the next inference.

    Call it in the thread that runs the inference (OpenMP keeps the setting per thread), before each inference.

    Args:
        requested: the most threads to use (default: every CPU of the process).

    Returns:
        The thread count set.
    """
    import torch

    threads = inference_threads(requested)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def ort_session_options(threads: int | None = None, **config: str) -> Any:
    """onnxruntime session options for CPU inference on a machine that may be busy.

    One intra-op pool of ``threads`` threads that sleep instead of spinning when idle
    (``session.intra_op.allow_spinning = 0``; the same for the inter-op pool), sequential execution, all graph
    optimisations.

    Args:
        threads: intra-op threads (default :func:`inference_threads`; the pool's size is fixed per session).
        config: further ``session config entries`` to add, e.g. ``{"session.intra_op.allow_spinning": "1"}``
            to restore spinning (keys with dots go through ``**{...}``).

    Returns:
        An ``onnxruntime.SessionOptions``.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = inference_threads() if threads is None else max(1, int(threads))
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    entries = {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0", **config}
    for key, value in entries.items():
        options.add_session_config_entry(key, str(value))
    return options
