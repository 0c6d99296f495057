"""The one way to read the bundle's configs outside ``python -m monai.bundle``: merged, with metadata, rooted."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser
from monai.bundle.utils import MACRO_KEY

from bundle.utils.io import PathLike

__all__ = ["BUNDLE_ROOT", "bundle_metadata", "bundle_version", "check_flags", "load_bundle_config"]

# the bundle (repository) root: bundle/utils/config.py -> ../..
BUNDLE_ROOT = Path(__file__).resolve().parents[2]


def _root_macros(config: Any, root: Path) -> Any:
    """Macros that name another config file by a bundle-relative path (``%configs/inference.json#network_def``)
    made absolute, so they resolve from any working directory (MONAI reads them relative to the current one)."""
    if isinstance(config, str) and config.startswith(MACRO_KEY + "configs/"):
        return MACRO_KEY + str(root / config[len(MACRO_KEY) :])
    if isinstance(config, Mapping):
        return {k: _root_macros(v, root) for k, v in config.items()}
    if isinstance(config, list):
        return [_root_macros(v, root) for v in config]
    return config


def load_bundle_config(
    *configs: str, bundle_root: PathLike = BUNDLE_ROOT, overrides: Mapping[str, Any] | None = None
) -> ConfigParser:
    """A parser of the bundle's configs, as ``python -m monai.bundle run`` would build it from the bundle root.

    Args:
        configs: file names in ``configs/`` (``"inference.json"``), merged left to right.
        bundle_root: the bundle root (default: this repository); ``@bundle_root`` is set to it.
        overrides: config ids and values applied after reading (``{"num_inference_steps": 2}``).

    Returns:
        A :class:`~monai.bundle.ConfigParser` with ``metadata.json`` read as ``_meta_``.
    """
    root = Path(bundle_root).resolve()
    parser = ConfigParser()
    parser.read_config([str(root / "configs" / name) for name in configs])
    parser.read_meta(str(root / "configs" / "metadata.json"))
    parser.config = _root_macros(parser.config, root)
    parser.update({"bundle_root": str(root), **dict(overrides or {})})
    return parser


def bundle_metadata(bundle_root: PathLike = BUNDLE_ROOT) -> dict[str, Any]:
    """The bundle's ``configs/metadata.json``, as MONAI reads it (``ConfigParser.read_meta``).

    Args:
        bundle_root: the bundle root.

    Returns:
        The metadata dict.
    """
    parser = ConfigParser()
    parser.read_meta(str(Path(bundle_root) / "configs" / "metadata.json"))
    return dict(parser.get("_meta_"))


def bundle_version(bundle_root: PathLike = BUNDLE_ROOT) -> str:
    """The bundle's version from ``configs/metadata.json``.

    Args:
        bundle_root: the bundle root.

    Returns:
        The version string, or ``"unknown"`` when the metadata cannot be read.
    """
    try:
        return str(bundle_metadata(bundle_root).get("version", "unknown"))
    except (OSError, ValueError):
        return "unknown"


def check_flags(**flags: Any) -> None:
    """Refuse a config switch that is not a boolean, before anything runs.

    ``python -m monai.bundle run ... --center_prompts false`` hands the config the text ``"false"`` (the command
    line reads Python's ``True``/``False`` as booleans and other bare words as text), and every expression that tests
    it (``$not @center_prompts``) takes the text as true: the opposite of what was asked, silently.

    Args:
        flags: the switches by config key, e.g. ``check_flags(resume=@resume)`` in a config's run list.

    Raises:
        ValueError: naming each switch whose value is not ``True`` or ``False`` and what to write instead.
    """
    wrong = {name: value for name, value in flags.items() if not isinstance(value, bool)}
    if wrong:
        listed = ", ".join(f"--{name} {value!r}" for name, value in wrong.items())
        raise ValueError(
            f"switches must be True or False, got {listed}: on the command line write True or False (capitalised; "
            "lowercase true/false arrive as text, which counts as true)"
        )
