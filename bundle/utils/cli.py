"""Helpers shared by the command-line tools (:mod:`bundle.cli`, ``scripts/``)."""

from __future__ import annotations

import argparse
import ast
import json
from collections.abc import Iterable, Mapping
from pathlib import PurePath
from typing import Any

__all__ = ["add_override_option", "bundle_override_args", "parse_overrides"]


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["KEY=VALUE", ...]`` (``--set`` options) as bundle config overrides.

    A VALUE is read as JSON (numbers, lists, ``null``, ``true``), else as a Python literal (``False``, ``None``, as
    on the ``python -m monai.bundle`` command line), else it is the string itself.

    Args:
        items: the ``KEY=VALUE`` strings; a later KEY overrides an earlier one.

    Returns:
        ``{KEY: value}``.

    Raises:
        ValueError: naming an item that has no ``=``.
    """
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            try:
                overrides[key] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                overrides[key] = value
    return overrides


def add_override_option(
    parser: argparse.ArgumentParser, flag: str = "--set", help: str = "bundle config override"
) -> None:
    """Adds a repeatable ``KEY=VALUE`` config-override option (read with :func:`parse_overrides`).

    Args:
        parser: the command's parser.
        flag: the option's name, e.g. ``--set`` or ``--eval_set``.
        help: what the overrides apply to, with an example; the VALUE rule is appended.
    """
    parser.add_argument(
        flag,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"{help} (repeatable; VALUE: JSON or a Python literal, else a string)",
    )


def bundle_override_args(settings: Mapping[str, Any]) -> list[str]:
    """Config overrides as ``python -m monai.bundle run`` arguments: ``["--KEY", "VALUE", ...]``.

    The command line reads each VALUE as a Python literal (Fire), so non-strings are written with ``repr``:
    ``False``, ``None``, ``[1, 2]``. JSON's ``false`` and ``null`` would arrive as text, which counts as true.

    Args:
        settings: ``{config key: value}``; strings and paths pass as they are.

    Returns:
        The arguments, in the order of ``settings``.
    """
    args: list[str] = []
    for key, value in settings.items():
        args += [f"--{key}", str(value) if isinstance(value, (str, PurePath)) else repr(value)]
    return args
