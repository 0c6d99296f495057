"""glibc ``malloc`` settings that keep freed memory in the process, for PyTorch on the CPU.

PyTorch's CPU allocator is plain ``malloc``/``free``. glibc serves a block above its mmap threshold (128 KiB at
first, raised adaptively up to 32 MiB) with a fresh ``mmap`` and returns it to the kernel on ``free``; it also
trims the heap's free top above 128 KiB. Every new activation of a few MiB or more is then fresh zero-filled pages,
one page fault per 4 KiB, on every forward and backward pass. SegOne's layers are short, memory-bound passes over
large tensors (1x1 convolutions, norms, shifts), so these faults cost a large share of the time. Measured on this
project's 2-core CPU at one thread (``scripts/benchmarks/benchmark_step.py --compare malloc``; docs/benchmarks.md, "Memory
reuse"): a training step of the shipped recipe 1.5x faster, the MONAI UNet's 1.2x; one window with 12 prompts or
4 windows of 3 prompts per call 1.6-1.9x faster.

:func:`keep_freed_memory` sets, through ``mallopt``: no mmap-served blocks (``M_MMAP_MAX`` 0), no trimming of the
heap (``M_TRIM_THRESHOLD`` 2 GiB - 1) and 256 MiB of extra heap per growth (``M_TOP_PAD``). Freed blocks are reused
by the next pass instead of going back to the kernel. The cost: the process keeps its peak heap for its lifetime
(peak resident memory up to 8 % higher in the measurement above). The bundle's workflows (training, evaluation,
inference, DICOM batch) and the MONAI Label app call it first. ``SEGONE_MALLOC=stock`` in the environment leaves
``malloc`` as it is (``kept`` or unset: the settings; any other value is refused, so a misspelt opt-out is not
silently ignored).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

__all__ = ["MALLOC_CHOICES", "MALLOC_ENV", "MALLOPT_SETTINGS", "keep_freed_memory"]

logger = logging.getLogger(__name__)

# the environment variable that opts out: SEGONE_MALLOC=stock (kept or empty: the settings)
MALLOC_ENV = "SEGONE_MALLOC"
MALLOC_CHOICES = ("stock", "kept", "")
# mallopt parameters of glibc's <malloc.h>: M_TRIM_THRESHOLD -1, M_TOP_PAD -2, M_MMAP_MAX -4
MALLOPT_SETTINGS: dict[str, tuple[int, int]] = {
    "M_MMAP_MAX": (-4, 0),
    "M_TRIM_THRESHOLD": (-1, 2**31 - 1),
    "M_TOP_PAD": (-2, 256 << 20),
}

_applied = False


def keep_freed_memory() -> bool:
    """Makes glibc ``malloc`` keep freed memory for reuse (see the module's docstring). Idempotent.

    Returns:
        ``True`` when the settings are in force, ``False`` when ``malloc`` was left as it is: not glibc (macOS,
        Windows, musl), ``SEGONE_MALLOC=stock``, or ``mallopt`` refused a setting (logged).

    Raises:
        ValueError: when ``SEGONE_MALLOC`` is set to anything but ``stock``, ``kept`` or nothing.
    """
    global _applied
    choice = os.environ.get(MALLOC_ENV, "").strip().lower()
    if choice not in MALLOC_CHOICES:
        raise ValueError(f"{MALLOC_ENV}={os.environ[MALLOC_ENV]!r}: expected 'stock' (glibc's defaults) or 'kept'")
    if _applied:
        return True
    if choice == "stock":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # only glibc has it; musl's mallopt accepts and ignores everything
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    for name, (param, value) in MALLOPT_SETTINGS.items():
        if mallopt(param, value) != 1:
            logger.warning("mallopt(%s, %d) was refused: malloc settings left partly stock", name, value)
            return False
    _applied = True
    return True
