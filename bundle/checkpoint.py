"""Checkpoints: atomic writes, ``weights_only`` reads, and errors that name the file and the problem.

A SegOne model file (``models/model.pt``) is a dict:

- ``"model"``: the network's state dict (the denoiser and the class prompts' embeddings, see
  :class:`~bundle.diffusion.MaskDiffusion`), the same for the training network and the inference network;
- ``"prompt_table"``: the :class:`~bundle.text.PromptEmbeddingTable` state (prompt strings, embeddings, and the
  text encoder's settings), so known prompts need no text tower;
- ``"metadata"``: plain facts about the run (bundle version, epoch, metric).

Training's resume file (``last.pt``) adds ``"optimizer"``, ``"trainer"`` and, when used, ``"lr_scheduler"``.
Everything is tensors, numbers, strings, lists and dicts, so ``torch.load(..., weights_only=True)`` reads it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch
import torch.nn as nn

from bundle.text import PromptEmbeddingTable, TextPromptEncoder

__all__ = ["CheckpointError", "save_atomic", "load_checkpoint", "load_weights", "load_state", "load_prompt_table"]

PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable, or does not fit the network."""


def save_atomic(obj: Any, path: PathLike) -> Path:
    """``torch.save`` to a temporary file in the target folder, then rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a model file is as readable as any other output
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``.

    Raises:
        CheckpointError: naming the file when it is missing, truncated or corrupt, or not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, pickle errors, foreign formats
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(ckpt).__name__}")
    return ckpt


def _state_dict_of(ckpt: Mapping[str, Any], path: PathLike, key: Optional[str]) -> Mapping[str, torch.Tensor]:
    if key and key in ckpt:
        state = ckpt[key]
    elif key and any(isinstance(v, dict) for v in ckpt.values()):
        raise CheckpointError(f"{path}: no '{key}' entry (entries: {sorted(ckpt)})")
    else:  # a bare state dict
        state = ckpt
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: '{key}' is not a state dict of tensors")
    return state


def load_weights(
    network: nn.Module, path: PathLike, key: Optional[str] = "model", map_location: Union[str, torch.device] = "cpu"
) -> nn.Module:
    """Load ``path[key]`` into ``network`` strictly and return the network (see :func:`load_state`)."""
    return load_state(network, load_checkpoint(path, map_location), path, key)


def load_state(network: nn.Module, ckpt: Mapping[str, Any], path: PathLike, key: Optional[str] = "model") -> nn.Module:
    """Load ``ckpt[key]`` (a checkpoint already read from ``path``) into ``network`` strictly.

    Raises:
        CheckpointError: naming the file and listing missing keys, unexpected keys and shape mismatches, when the
            checkpoint was saved from another architecture or configuration.
    """
    state = _state_dict_of(ckpt, path, key)
    own = network.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: {tuple(state[k].shape)} in file, {tuple(v.shape)} in network"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:

        def _few(items: list) -> str:
            return ", ".join(items[:4]) + (f" (+{len(items) - 4} more)" if len(items) > 4 else "")

        problems = []
        if shapes:
            problems.append(f"{len(shapes)} shape mismatch(es): {_few(shapes)}")
        if missing:
            problems.append(f"{len(missing)} missing key(s): {_few(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected key(s): {_few(unexpected)}")
        raise CheckpointError(
            f"{path}: checkpoint does not fit {type(network).__name__} as configured (another architecture or "
            f"other network settings?): " + "; ".join(problems)
        )
    network.load_state_dict(state, strict=True)
    return network


def load_prompt_table(
    path: PathLike, encoder: Optional[TextPromptEncoder] = None, key: str = "prompt_table"
) -> PromptEmbeddingTable:
    """The prompt table saved with a model file (``encoder`` embeds prompts that are not in it)."""
    ckpt = load_checkpoint(path)
    if key not in ckpt:
        raise CheckpointError(f"{path}: no '{key}' entry (entries: {sorted(ckpt)}); was it saved by SegOne training?")
    try:
        return PromptEmbeddingTable.from_state_dict(ckpt[key], encoder=encoder)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from e
