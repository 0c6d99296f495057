"""Shared helpers: atomic file output and hashes, checkpoints, bundle configs and metadata, the command line, CPU
thread defaults for inference, malloc settings that reuse freed memory."""

from .config import check_flags
from .distributed import is_main_process, unwrap_module
from .io import TEMP_MARK, PathLike, atomic_path, file_sha256, save_torch_atomic, write_text_atomic
from .memory import keep_freed_memory
from .metadata import class_names_from_metadata, source_name
from .threads import apply_thread_env, inference_threads, ort_session_options, set_inference_threads, thread_env

__all__ = [
    "apply_thread_env",
    "atomic_path",
    "check_flags",
    "class_names_from_metadata",
    "file_sha256",
    "inference_threads",
    "is_main_process",
    "keep_freed_memory",
    "ort_session_options",
    "PathLike",
    "save_torch_atomic",
    "set_inference_threads",
    "source_name",
    "TEMP_MARK",
    "thread_env",
    "unwrap_module",
    "write_text_atomic",
]
