"""Facts read from metadata: the bundle's ``metadata.json`` (class names) and a MONAI item's (its source file)."""

from __future__ import annotations

import json
import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["class_names_from_metadata", "source_name"]


def class_names_from_metadata(metadata: str | os.PathLike | Mapping[str, Any], output: str = "pred") -> dict[int, str]:
    """The classes a model segments, from ``network_data_format.outputs[output].channel_def``.

    Args:
        metadata: the parsed ``metadata.json`` (``@_meta_`` in a config), or its path.
        output: the output whose ``channel_def`` names the classes.

    Returns:
        ``{label value: class name}`` in label order, background (0) dropped.

    Raises:
        ValueError: the metadata has no such ``channel_def``.
    """
    meta = metadata if isinstance(metadata, Mapping) else json.loads(Path(metadata).read_text())
    try:
        channel_def = meta["network_data_format"]["outputs"][output]["channel_def"]
    except KeyError as e:
        raise ValueError(f"metadata has no network_data_format.outputs.{output}.channel_def ({e})") from e
    names = {int(k): str(v) for k, v in channel_def.items()}
    return {k: v for k, v in sorted(names.items()) if k != 0}


def source_name(data: Mapping[Hashable, Any], key: Hashable) -> str:
    """The file an item came from (MONAI metadata), for error messages.

    Args:
        data: a MONAI dictionary item.
        key: the entry whose source is wanted.

    Returns:
        ``filename_or_obj`` of the entry's metadata, or ``str(key)`` when unknown.
    """
    value = data.get(key)
    meta = getattr(value, "meta", None) or data.get(f"{key}_meta_dict") or {}
    return str(meta.get("filename_or_obj", key))
