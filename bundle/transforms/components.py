"""Which structures keep only their largest connected component: one switch for all, or a choice per structure.

A whole-volume answer can hold small false islands far from the structure (windows that never held it still answer a
little); keeping the largest 26-connected component removes them. For a compact organ (liver, a ventricle) that is
a gain; for a structure in many pieces (cerebrospinal fluid, a tumour's edema) it throws away true answer. nnU-Net
chooses the rule per class on its validation predictions; ``keep_largest`` does the same: ``True`` (every
structure), ``False`` (none), or the structures' names (those, e.g. as chosen by
``scripts/experiments/largest_component.py``). A choice per structure needs validation cases to choose on: on a
suite model's 1-4 validation volumes per data set it did worse on test than one switch per data set
(docs/suite.md, session 42). The transform is MONAI's ``KeepLargestConnectedComponentd`` with ``applied_labels``
from :func:`largest_component_labels`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["largest_component_labels"]


def largest_component_labels(names: Sequence[str], keep_largest: Any, known: Iterable[str] | None = None) -> list[int]:
    """The label values (``1..K``, before relabelling) whose largest connected component alone is kept.

    Args:
        names: the prompts, in the order of their label values ``1..K``.
        keep_largest: ``True`` (every structure), ``False`` (none), or a list of structure names: those of ``names``
            that it holds (case- and whitespace-insensitive); names of other known structures are allowed (a choice
            made over a suite lists structures of every data set) and skipped.
        known: every structure name the model answers (default: ``names``); a listed name outside it is an error.

    Returns:
        The label values, ascending; empty when none.

    Raises:
        ValueError: ``keep_largest`` is text or another type (on the command line ``false`` arrives as text), or it
            names a structure the model does not know (naming it and the known ones).
    """
    from bundle.text import normalize_prompt

    if isinstance(keep_largest, bool):
        return list(range(1, len(names) + 1)) if keep_largest else []
    if isinstance(keep_largest, str) or not isinstance(keep_largest, (list, tuple)):
        raise ValueError(
            f"keep_largest must be True, False or a list of structure names, got {keep_largest!r}: on the command "
            "line write True, False or a list such as \"['liver', 'spleen']\""
        )
    wanted = [normalize_prompt(n) for n in keep_largest]
    vocabulary = {normalize_prompt(n) for n in (known if known is not None else names)} | {
        normalize_prompt(n) for n in names
    }
    unknown = [n for n in wanted if n not in vocabulary]
    if unknown:
        raise ValueError(
            f"keep_largest names {', '.join(repr(n) for n in unknown)}, which this model does not segment "
            f"(its structures: {', '.join(sorted(vocabulary))})"
        )
    return [value for value, name in enumerate(names, start=1) if normalize_prompt(name) in wanted]
