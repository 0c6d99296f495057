"""Atomic file output: write to a temporary name beside the target, rename into place only when complete."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

__all__ = ["atomic_path"]


@contextmanager
def atomic_path(path: Union[str, os.PathLike], suffix: str = "", mark: str = ".tmp") -> Iterator[Path]:
    """Yields a temporary path in ``path``'s folder; renames it to ``path`` when the block ends without error and
    removes it otherwise, so a reader (or a killed run) never leaves or sees half a file under the final name.

    Args:
        path: the final file.
        suffix: ending of the temporary name, for writers that choose the format by extension (``.nii.gz``).
        mark: text in the temporary name, by which leftovers of a killed process can be found.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{mark}-{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
