"""Text-prompt transforms (MONAI dictionary transforms) and the class names they use.

Training: :class:`RandPromptd` turns a multi-label map into one (prompt, binary target) pair per sample: usually
a class present in the map, sometimes (``absent_prob``) a class that is absent, whose target is empty, so the
model learns to answer "not here". Inference: :class:`EmbedPromptd` turns requested prompts into embeddings.
Class names come from ``channel_def`` in ``configs/metadata.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Hashable, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable

from bundle.atomic import atomic_path
from bundle.text import PromptEmbeddingTable, normalize_prompt

__all__ = ["class_names_from_metadata", "RandPromptd", "EmbedPromptd", "SaveLabelMapd", "source_name", "output_path_for"]


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


def output_path_for(source: Union[str, os.PathLike], output_dir: Union[str, os.PathLike], postfix: str = "seg") -> Path:
    """``output_dir/<source stem>_<postfix>.nii.gz``."""
    name = Path(str(source)).name
    for suffix in (".nii.gz", ".nii", ".mha", ".nrrd"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return Path(output_dir) / f"{name}_{postfix}.nii.gz"


class SaveLabelMapd(MapTransform):
    """Writes a label map as NIfTI with its own geometry, atomically (temporary file, then rename).

    A killed run never leaves a half-written file; an existing output is replaced only by a complete one.

    Args:
        keys: the label map(s) ``[1, *S]`` (MetaTensor carrying ``affine`` and ``filename_or_obj``).
        output_dir: destination folder (``None``: write nothing).
        postfix: appended to the source file's stem.
        dtype: integer type of the written labels.
        source_key: the key whose file name names the output (defaults to the label map's own metadata).
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: Optional[Union[str, os.PathLike]],
        postfix: str = "seg",
        dtype: Any = np.uint8,
        source_key: Optional[str] = "image",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir) if output_dir else None
        self.postfix = postfix
        self.dtype = dtype
        self.source_key = source_key

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        import nibabel as nib

        d = dict(data)
        if self.output_dir is None:
            return d
        for key in self.key_iterator(d):
            label = d[key]
            source = source_name(d, self.source_key) if self.source_key in d else source_name(d, key)
            affine = np.asarray(getattr(label, "affine", np.eye(4)), dtype=np.float64)
            array = torch.as_tensor(label).detach().cpu().numpy()
            if array.ndim == len(affine) and array.shape[0] == 1:  # drop the channel axis
                array = array[0]
            out = output_path_for(source, self.output_dir, self.postfix)
            with atomic_path(out, suffix=".nii.gz") as tmp:
                nib.save(nib.Nifti1Image(np.rint(array).astype(self.dtype), affine), str(tmp))
            d[f"{key}_path"] = str(out)
        return d
