"""The prompts of one inference run: names, label values and embeddings."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from bundle.text.encoder import normalize_prompt
from bundle.text.table import PromptEmbeddingTable
from bundle.utils.io import write_text_atomic

__all__ = ["PromptSelection"]


class PromptSelection:
    """The prompts of one inference run: their names, the label value each gets, and their embeddings.

    Prompts that name a ``channel_def`` class keep that class's label value; other prompts (open vocabulary, with a
    pretrained text tower) get the next free values in the order given.

    Args:
        prompts: prompt texts; ``None`` or empty means every class of ``class_names`` (the network's own prompts).
        class_names: ``{label value: class name}`` of ``channel_def`` (background excluded).
        table: a callable returning the prompt table (e.g. loading it from the checkpoint); called only when
            ``prompts`` are given, so the default run reads nothing more.

    Attributes:
        names: the prompts, normalised.
        values: their label values.
        embeddings: ``[K, E]`` embeddings, or ``None`` for the network's own class prompts.

    Raises:
        ValueError: when ``prompts`` are given but ``table`` is None, or a prompt is empty.
        UnknownPromptError: when the table cannot embed a prompt (no text encoder for a prompt it does not hold).
    """

    def __init__(
        self,
        prompts: Sequence[str] | None,
        class_names: Mapping[int, str],
        table: Callable[[], PromptEmbeddingTable] | None = None,
    ) -> None:
        by_name = {normalize_prompt(v): int(k) for k, v in class_names.items()}
        if isinstance(prompts, str):
            prompts = [p for p in prompts.split(",") if p.strip()]
        if not prompts:
            self.names = list(by_name)
            self.values = list(by_name.values())
            self.embeddings: torch.Tensor | None = None
            return
        self.names = list(dict.fromkeys(normalize_prompt(p) for p in prompts))
        next_value = max(by_name.values(), default=0) + 1
        self.values = []
        for name in self.names:
            if name in by_name:
                self.values.append(by_name[name])
            else:
                self.values.append(next_value)
                next_value += 1
        if table is None:
            raise ValueError("prompts were given but no prompt table to embed them")
        self.embeddings = table()(self.names)

    @property
    def label_map(self) -> dict[str, int]:
        """``{normalised prompt: label value}``, in the order of the prompts."""
        return dict(zip(self.names, self.values))

    def write(self, output_dir: str | os.PathLike) -> Path:
        """``labels.json`` in ``output_dir``: ``{"0": "background", value: prompt, ...}`` for the label maps written.

        Args:
            output_dir: an existing folder; the file is written there atomically, replacing any earlier one.

        Returns:
            The path of the file written.
        """
        labels = {"0": "background", **{str(v): n for n, v in self.label_map.items()}}
        return write_text_atomic(Path(output_dir) / "labels.json", json.dumps(labels, indent=2))
