"""Helpers shared by the command-line tools (:mod:`bundle.cli`, ``scripts/``)."""

from __future__ import annotations

import argparse
import ast
import json
from collections.abc import Iterable
from typing import Any

__all__ = ["add_override_option", "parse_overrides"]


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
