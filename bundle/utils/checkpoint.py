"""Checkpoints: the model file format, ``weights_only`` reads, and errors that name the file and the problem.

A SegOne model is two files, so that MONAI's own loaders get the weights with their default arguments
(``monai.bundle.load(..., workflow_type="inference")``, ``ckpt_export``, MONAI Label):

- ``model.pt``: the plain state dict of the network (the denoiser and the class prompts' embeddings,
  :class:`~bundle.diffusion.MaskDiffusion`), the same keys for the training and the inference network;
- ``model.prompts.pt`` beside it (:func:`prompt_table_path`): ``{"prompt_table", "metadata"}``: the
  :class:`~bundle.text.PromptEmbeddingTable` state (prompt strings, embeddings and the text encoder's settings, so
  known prompts need no text tower) and plain facts about the run (bundle version, epoch, metric, and from 0.16 each
  structure's smallest training volume, the scale of the "absent" rule: :func:`model_structure_volumes`).

Model files of bundle 0.4 and older (one dict ``{"model", "prompt_table", "metadata"}``) still load. Training's resume
file (``last.pt``) is ``{"model", "optimizer", "trainer", "lr_scheduler"}``. Everything is tensors, numbers, strings,
lists and dicts, so ``torch.load(..., weights_only=True)`` reads it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from bundle.text import PromptEmbeddingTable, TextPromptEncoder
from bundle.utils.io import PathLike, save_torch_atomic

__all__ = [
    "CheckpointError",
    "check_finite",
    "load_checkpoint",
    "load_model_info",
    "load_prompt_table",
    "load_state",
    "load_weights",
    "model_class_names",
    "model_structure_volumes",
    "prompt_table_path",
    "save_model",
]

# the entry of a legacy (bundle <= 0.4) model file, and of a resume file, that holds the weights
LEGACY_MODEL_KEY = "model"


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable, or does not fit the network."""


def prompt_table_path(model_path: PathLike) -> Path:
    """The prompt-table file that goes with a model file: ``model.pt`` -> ``model.prompts.pt``.

    Args:
        model_path: the model file.

    Returns:
        The path beside it.
    """
    path = Path(model_path)
    return path.with_name(f"{path.stem}.prompts.pt")


def save_model(
    network: nn.Module, path: PathLike, prompt_table: PromptEmbeddingTable, metadata: Mapping[str, Any]
) -> Path:
    """Writes a model: the network's plain state dict to ``path`` and the prompt table beside it, both atomically.

    The prompt table is written first: a reader that finds the new weights also finds their prompts.

    Args:
        network: the network (unwrapped from DDP by the caller).
        path: the model file.
        prompt_table: the table the class prompts' embeddings came from.
        metadata: plain facts about the run (numbers, strings).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    save_torch_atomic({"prompt_table": prompt_table.state_dict(), "metadata": dict(metadata)}, prompt_table_path(path))
    return save_torch_atomic({k: v.detach().cpu() for k, v in network.state_dict().items()}, path)


def load_checkpoint(path: PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Reads a checkpoint with ``weights_only=True``.

    Args:
        path: the file.
        map_location: where tensors go.

    Returns:
        The checkpoint's dict.

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


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def _state_dict_of(ckpt: Mapping[str, Any], path: PathLike, key: str | None) -> Mapping[str, torch.Tensor]:
    if key is not None:
        if key not in ckpt:
            raise CheckpointError(f"{path}: no '{key}' entry (entries: {sorted(ckpt)})")
        state = ckpt[key]
    elif _is_state_dict(ckpt):
        state = ckpt
    elif _is_state_dict(ckpt.get(LEGACY_MODEL_KEY)):  # a model file of bundle <= 0.4, or a resume file
        state = ckpt[LEGACY_MODEL_KEY]
    else:
        raise CheckpointError(
            f"{path}: neither a state dict nor a SegOne model or resume file (entries: {sorted(ckpt)[:8]})"
        )
    if not _is_state_dict(state):
        raise CheckpointError(f"{path}: '{key}' is not a state dict of tensors")
    return state


def load_weights(
    network: nn.Module,
    path: PathLike,
    key: str | None = None,
    map_location: str | torch.device = "cpu",
    keep_own: Sequence[str] = (),
) -> nn.Module:
    """Loads a checkpoint into ``network`` strictly (see :func:`load_state`).

    Args:
        network: the network as configured.
        path: a model file (plain state dict, or a legacy model file) or a resume file.
        key: the entry holding the state dict; ``None`` finds it (the file itself, or its ``"model"`` entry).
        map_location: where tensors go.
        keep_own: entries of ``network``'s state dict that keep their configured values, whatever the file holds
            (fine-tuning keeps ``prompt_embeddings``, built from the new data's label names).

    Returns:
        ``network``, loaded.

    Raises:
        CheckpointError: naming the file, when it is missing or unreadable, does not fit ``network``, or holds
            NaN or infinite weights.
    """
    return load_state(network, load_checkpoint(path, map_location), path, key, keep_own)


def load_state(
    network: nn.Module, ckpt: Mapping[str, Any], path: PathLike, key: str | None = None, keep_own: Sequence[str] = ()
) -> nn.Module:
    """Loads a checkpoint already read from ``path`` into ``network`` strictly.

    Args:
        network: the network as configured.
        ckpt: the checkpoint's dict.
        path: its file (for messages).
        key: the entry holding the state dict; ``None`` finds it.
        keep_own: entries of ``network``'s state dict that keep their configured values (each must be one of
            them); the file's entries of those names, whatever their shape, are not used.

    Returns:
        ``network``, loaded.

    Raises:
        CheckpointError: naming the file and listing missing keys, unexpected keys and shape mismatches, when the
            checkpoint was saved from another architecture or configuration; naming the file and the first
            non-finite tensor, when weights are NaN or infinite.
    """
    state = dict(_state_dict_of(ckpt, path, key))
    own = network.state_dict()
    for name in keep_own:
        if name not in own:
            raise ValueError(f"keep_own: {name!r} is not in {type(network).__name__}'s state dict")
        state[name] = own[name]
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
            f"other network settings, e.g. features, shared_decoder or coordinate_channels, than it was trained "
            f"with?): " + "; ".join(problems)
        )
    check_finite(state, path)
    network.load_state_dict(state, strict=True)
    return network


def check_finite(state: Mapping[str, torch.Tensor], path: PathLike) -> None:
    """Refuses weights with NaN or infinite values (a diverged run's weights give empty masks, silently).

    Args:
        state: a state dict.
        path: its file (for messages).

    Raises:
        CheckpointError: naming the file, the first non-finite tensor and how many tensors are affected.
    """
    bad = [
        (k, int((~torch.isfinite(v)).sum()), v.numel())
        for k, v in state.items()
        if (v.is_floating_point() or v.is_complex()) and not bool(torch.isfinite(v).all())
    ]
    if bad:
        key, count, numel = bad[0]
        more = f"; {len(bad)} of {len(state)} tensors are affected" if len(bad) > 1 else ""
        raise CheckpointError(
            f"{path}: non-finite weights (the run that saved them diverged?): '{key}' has {count} NaN or infinite "
            f"value(s) of {numel}{more}"
        )


def load_model_info(path: PathLike) -> dict[str, Any]:
    """The prompt table state and run metadata that go with a model file.

    Args:
        path: the model file.

    Returns:
        ``{"prompt_table": state, "metadata": dict}`` from ``model.prompts.pt``, or from the model file itself when
        it is a legacy (bundle <= 0.4) model file.

    Raises:
        CheckpointError: naming the files, when neither holds a prompt table.
    """
    side = prompt_table_path(path)
    if side.is_file():
        info = load_checkpoint(side)
        source = side
    else:
        info = load_checkpoint(path)
        source = Path(path)
    if "prompt_table" not in info:
        raise CheckpointError(
            f"{path}: no prompt table ({side} is missing and the model file has no 'prompt_table' entry); "
            "was it saved by SegOne training?"
        )
    return {"prompt_table": info["prompt_table"], "metadata": dict(info.get("metadata") or {}), "source": str(source)}


def model_structure_volumes(path: PathLike | None, onnx_path: PathLike | None = None) -> dict[str, float]:
    """Each structure's smallest volume (ml) in the labels a model was trained on, as its files record it.

    The scale of the per-structure "absent" rule (:func:`~bundle.transforms.answer_thresholds_ml`). Model files of
    bundle 0.15 and older, and bare state dicts, record none: the rule then falls back to ``min_answer_ml``.

    Args:
        path: the model file (its metadata's ``structure_volumes_ml``); ``None`` or missing: none.
        onnx_path: an edge graph instead (its manifest's ``structure_volumes_ml``).

    Returns:
        ``{structure name: ml}``, empty when none is recorded.

    Raises:
        ValueError: naming the file, when the recorded table is not a mapping of names to non-negative numbers.
    """
    if onnx_path:
        from bundle.inference.onnx import read_edge_manifest

        source, table = str(onnx_path), read_edge_manifest(onnx_path).get("structure_volumes_ml")
    elif path and Path(path).is_file():
        try:
            info = load_model_info(path)
        except CheckpointError:
            return {}
        source, table = info["source"], info["metadata"].get("structure_volumes_ml")
    else:
        return {}
    if table is None:
        return {}
    try:
        volumes = {str(k): float(v) for k, v in dict(table).items()}
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: structure_volumes_ml is not a mapping of names to volumes in ml ({e})") from e
    if not all(0 <= v < math.inf for v in volumes.values()):
        raise ValueError(f"{source}: structure_volumes_ml holds a negative, infinite or NaN volume: {volumes}")
    return volumes


def load_prompt_table(path: PathLike, encoder: TextPromptEncoder | None = None) -> PromptEmbeddingTable:
    """The prompt table saved with a model file.

    Args:
        path: the model file.
        encoder: embeds prompts that are not in the table (``None``: unknown prompts are an error).

    Returns:
        The table.

    Raises:
        CheckpointError: naming the file, when it has no prompt table or the table does not fit ``encoder``.
    """
    info = load_model_info(path)
    try:
        return PromptEmbeddingTable.from_state_dict(info["prompt_table"], encoder=encoder)
    except ValueError as e:
        raise CheckpointError(f"{info['source']}: {e}") from e


def model_class_names(path: PathLike | None, metadata: PathLike | Mapping[str, Any]) -> dict[int, str]:
    """The classes a model file segments: ``{label value: name}`` (background excluded).

    ``metadata.json``'s ``channel_def``, unless the model's own class prompts are others (a model trained on another
    data set, or on a suite of them): then those, numbered ``1..K`` in the order of the network's prompt embeddings.
    Each embedding row of the model file (``prompt_embeddings``, ``[K, E]``) is named by the prompt of the table
    saved beside it whose embedding it is (the table may hold more prompts than the classes).

    Args:
        path: the model file (``None``, missing, or not named by its table: the metadata's classes; loading the
            weights then reports the file's problem).
        metadata: the bundle's ``metadata.json`` (parsed, or its path).

    Returns:
        The classes.
    """
    from bundle.text import normalize_prompt
    from bundle.utils.metadata import class_names_from_metadata

    bundle_classes = class_names_from_metadata(metadata)
    if not path or not Path(path).is_file():
        return bundle_classes
    try:
        rows = _state_dict_of(load_checkpoint(path), path, None).get("prompt_embeddings")
        table = PromptEmbeddingTable.from_state_dict(load_model_info(path)["prompt_table"])
    except (CheckpointError, ValueError):
        return bundle_classes
    if rows is None or rows.dim() != 2 or not table.embeddings:
        return bundle_classes
    names = table.prompts
    stored = table(names)  # what the table gives out (centred, for a centred table): what the rows were made from
    if stored.shape[-1] != rows.shape[-1]:
        return bundle_classes
    given = dict(zip(names, stored))
    tolerance = 1e-5 * max(1.0, float(rows.abs().max()))
    bundle_names = [normalize_prompt(n) for n in bundle_classes.values()]
    if len(bundle_names) == rows.shape[0] and all(
        n in given and float((given[n] - rows[i].float()).abs().max()) <= tolerance for i, n in enumerate(bundle_names)
    ):
        return bundle_classes  # the rows are the bundle's classes (checked first: a table may repeat an embedding)
    distance = (rows.float().unsqueeze(1) - stored.unsqueeze(0)).abs().amax(dim=2)  # [K, table size]
    best = distance.argmin(dim=1)
    if any(float(distance[i, best[i]]) > tolerance for i in range(rows.shape[0])):
        return bundle_classes
    prompts = [names[int(j)] for j in best]
    if len(set(prompts)) != len(prompts):  # rows the table cannot tell apart: no names to trust
        return bundle_classes
    return {i + 1: name for i, name in enumerate(prompts)}
