"""Helpers shared by the command-line tools (:mod:`bundle.cli`, ``scripts/``)."""

from __future__ import annotations

import ast
import json
from collections.abc import Iterable
from typing import Any

__all__ = ["parse_overrides"]


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
