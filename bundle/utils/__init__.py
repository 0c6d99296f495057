"""Shared helpers: atomic file output and hashes, checkpoints, bundle configs and metadata, the command line."""

from .distributed import is_main_process, unwrap_module
from .io import TEMP_MARK, PathLike, atomic_path, file_sha256, save_torch_atomic, write_text_atomic
from .metadata import class_names_from_metadata, source_name

__all__ = [
    "atomic_path",
    "class_names_from_metadata",
    "file_sha256",
    "is_main_process",
    "PathLike",
    "save_torch_atomic",
    "source_name",
    "TEMP_MARK",
    "unwrap_module",
    "write_text_atomic",
]
