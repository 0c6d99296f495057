"""Text-prompt transforms (MONAI dictionary transforms) and the class names they use.

Training: :class:`RandPromptd` turns a multi-label map into one (prompt, binary target) pair per sample: usually
a class present in the map, sometimes (``absent_prob``) a class that is absent, whose target is empty, so the
model learns to answer "not here". Inference: :class:`EmbedPromptd` turns requested prompts into embeddings.
Class names come from ``channel_def`` in ``configs/metadata.json``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Hashable, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable

from bundle.text import PromptEmbeddingTable, normalize_prompt

__all__ = ["class_names_from_metadata", "RandPromptd", "EmbedPromptd", "source_name"]


def class_names_from_metadata(
    metadata: Union[str, os.PathLike, Mapping[str, Any]], output: str = "pred"
) -> Dict[int, str]:
    """``{label value: class name}`` from ``network_data_format.outputs[output].channel_def``, background dropped."""
    meta = metadata if isinstance(metadata, Mapping) else json.loads(open(metadata).read())
    try:
        channel_def = meta["network_data_format"]["outputs"][output]["channel_def"]
    except KeyError as e:
        raise ValueError(f"metadata has no network_data_format.outputs.{output}.channel_def ({e})") from e
    names = {int(k): str(v) for k, v in channel_def.items()}
    return {k: v for k, v in sorted(names.items()) if k != 0}


def source_name(data: Mapping[Hashable, Any], key: Hashable) -> str:
    """The file an item came from (MONAI metadata), for error messages; ``key`` when unknown."""
    value = data.get(key)
    meta = getattr(value, "meta", None) or data.get(f"{key}_meta_dict") or {}
    return str(meta.get("filename_or_obj", key))


class RandPromptd(Randomizable, MapTransform):
    """Samples one class prompt per item and writes its binary target.

    Args:
        keys: the multi-label map (``[1, *S]`` or ``[*S]`` integer labels).
        class_names: ``{label value: name}`` (background excluded), e.g. from :func:`class_names_from_metadata`.
        target_key: where the binary target ``[1, *S]`` (float32) goes.
        prompt_key: where the prompt text goes.
        class_key: where the sampled label value goes (an int; 0 never occurs).
        absent_prob: probability of prompting a class that is absent from the map (empty target), when there is one.

    Raises:
        ValueError: naming the label file, when the map holds values outside ``class_names`` and background.
    """

    def __init__(
        self,
        keys: KeysCollection,
        class_names: Mapping[int, str],
        target_key: str = "target",
        prompt_key: str = "prompt",
        class_key: str = "prompt_class",
        absent_prob: float = 0.1,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if not class_names:
            raise ValueError("RandPromptd needs at least one class name")
        if 0 in class_names:
            raise ValueError("class 0 is the background and cannot be prompted")
        if not 0.0 <= absent_prob <= 1.0:
            raise ValueError(f"absent_prob must be in [0, 1], got {absent_prob}")
        self.class_names = {int(k): normalize_prompt(v) for k, v in class_names.items()}
        self.target_key, self.prompt_key, self.class_key = target_key, prompt_key, class_key
        self.absent_prob = absent_prob
        self._choice: Optional[int] = None

    def randomize(self, present: Sequence[int]) -> None:  # type: ignore[override]
        absent = [c for c in self.class_names if c not in present]
        if absent and (not present or self.R.rand() < self.absent_prob):
            self._choice = int(self.R.choice(absent))
        else:
            self._choice = int(self.R.choice(list(present)))

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            values = torch.as_tensor(label).unique().tolist()
            unknown = sorted(v for v in values if int(v) != v or (int(v) != 0 and int(v) not in self.class_names))
            if unknown:
                raise ValueError(
                    f"{source_name(d, key)}: label values {unknown} are not in channel_def "
                    f"(known: 0 background, {self.class_names})"
                )
            present = [int(v) for v in values if int(v) in self.class_names]
            self.randomize(present)
            assert self._choice is not None
            target = (torch.as_tensor(label) == self._choice).float()
            if target.shape[0] != 1:  # a label without its channel axis
                target = target[None]
            d[self.target_key] = target
            d[self.prompt_key] = self.class_names[self._choice]
            d[self.class_key] = self._choice
        return d


class EmbedPromptd(MapTransform):
    """Replaces prompt text with its embedding from a :class:`~bundle.text.PromptEmbeddingTable`.

    Args:
        keys: the prompt entries: a string, or a list of strings (one embedding each).
        table: the prompt table (unknown prompts are encoded when it has an encoder, else a clear error).
        embedding_key: where the embedding goes: ``[embed_dim]`` for one prompt, ``[N, embed_dim]`` for a list.
    """

    def __init__(
        self,
        keys: KeysCollection,
        table: PromptEmbeddingTable,
        embedding_key: str = "prompt_embedding",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.table = table
        self.embedding_key = embedding_key

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            prompts = d[key]
            if isinstance(prompts, str):
                d[self.embedding_key] = self.table([prompts])[0]
            else:
                as_list: List[str] = [str(p) for p in np.asarray(prompts, dtype=object).ravel()]
                d[self.embedding_key] = self.table(as_list)
        return d
