"""File output and identity: the one atomic-write helper every writer uses, and content hashes.

Every file SegOne writes (label maps, DICOM SEG, model and resume files, exported graphs, metrics, reports, cache
entries) goes through :func:`atomic_path`: it is written under a temporary name beside its target and renamed into
place only when complete, so a reader, or a run killed at any moment, never sees half a file under the final name.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "PathLike",
    "TEMP_MARK",
    "atomic_path",
    "write_text_atomic",
    "save_torch_atomic",
    "file_sha256",
    "remove_leftovers",
]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

# in the name of every file being written: leftovers of a killed process are found by it
TEMP_MARK = ".segone-tmp"
# the temporary names atomic_path writes: .<name>.segone-tmp-<pid>-<8 hex digits><suffix>
_TEMP_NAME = re.compile(
    r"^\.(?P<name>.+)" + re.escape(TEMP_MARK) + r"-(?P<pid>\d+)-[0-9a-f]{8}(?P<suffix>(?:\.[A-Za-z0-9]+)*)$"
)


@contextmanager
def atomic_path(path: PathLike, suffix: str = "", sync: bool = False) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; renames it to ``path`` when the block ends without error and removes
    it otherwise.

    Args:
        path: the final file; its folder is created.
        suffix: ending of the temporary name, for writers that choose the format by extension (``.nii.gz``).
        sync: flush the file to disk before the rename (model files: a crash right after the rename must not
            leave an empty file under the final name).

    Yields:
        The temporary path ``.<name>.segone-tmp-<unique><suffix>`` in ``path``'s folder. Unique per call, so
        threads and processes writing the same target never share a temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TEMP_MARK}-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")
    try:
        yield tmp
        if sync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: PathLike, text: str) -> Path:
    """Writes ``text`` to ``path`` through :func:`atomic_path`.

    Args:
        path: the final file.
        text: its content (UTF-8).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def save_torch_atomic(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` through :func:`atomic_path`, synced to disk before the rename.

    Args:
        obj: what to save (tensors, numbers, strings, lists and dicts, so ``weights_only`` reads it back).
        path: the final file.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    with atomic_path(path, sync=True) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def file_sha256(path: PathLike) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB chunks.

    Args:
        path: the file.

    Returns:
        64 hexadecimal digits.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OverflowError, OSError):
        return True  # someone else's live process, or a pid we cannot judge: keep its file
    return True


def remove_leftovers(folder: PathLike) -> list[Path]:
    """Removes the temporary files that killed processes left in ``folder`` and its sub-folders.

    Only regular files whose names match what :func:`atomic_path` writes (``.<name>.segone-tmp-<pid>-<8 hex
    digits><suffix>``) and whose writing process no longer runs on this machine are removed; anything else, and
    the temporaries of live writers (another run sharing the folder), stay. Symbolic links are neither followed
    nor removed.

    Args:
        folder: the output folder of a run (e.g. training's ``output_dir``); a missing folder is no error.

    Returns:
        The removed files.
    """
    removed: list[Path] = []
    root = Path(folder)
    if not root.is_dir():
        return removed
    for dirpath, _, filenames in os.walk(root, followlinks=False):
        for name in filenames:
            match = _TEMP_NAME.match(name)
            path = Path(dirpath) / name
            if match is None or path.is_symlink() or not path.is_file() or _process_alive(int(match["pid"])):
                continue
            try:
                path.unlink()
            except FileNotFoundError:  # another process removed it first
                continue
            removed.append(path)
            logger.info("removed %s, left by a killed run", path)
    return removed
