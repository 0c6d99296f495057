"""Text-prompt transforms: a sampled class prompt and its binary target (training), prompt embeddings."""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable

from bundle.text import PromptEmbeddingTable, normalize_prompt
from bundle.utils.metadata import source_name

__all__ = ["RandPromptd", "EmbedPromptd"]


class RandPromptd(Randomizable, MapTransform):
    """Samples one class prompt per item and writes its binary target; or, with ``all_classes``, prompts every class.

    Args:
        keys: the multi-label map (``[1, *S]`` or ``[*S]`` integer labels).
        class_names: ``{label value: name}`` (background excluded), e.g. from :func:`class_names_from_metadata`.
        target_key: where the binary target ``[1, *S]`` (float32) goes; ``[K, *S]`` with ``all_classes`` or
            ``num_prompts`` ``K > 1``.
        prompt_key: where the prompt text goes; the ``K`` names (``class_names`` order with ``all_classes``).
        class_key: where the sampled label value goes (an int; 0 never occurs); the ``K`` values (``[K]`` int64
            tensor) with ``all_classes`` or ``num_prompts > 1``.
        absent_prob: probability of prompting a class that is absent from the map (empty target), when there is one.
            Not used with ``all_classes``, where absent classes are prompted with their empty targets.
        all_classes: prompt every class of ``class_names`` at once, so that a loss can make the classes compete for
            each voxel (:class:`~bundle.diffusion.MaskDiffusion`'s ``competition_weight``).
        num_prompts: prompts per item, ``K`` distinct classes drawn slot by slot as the single prompt is (each slot
            absent with ``absent_prob`` while both kinds are left, own-folder absent ones with ``own_absent_prob``),
            in drawn order; targets ``[K, *S]``. For a suite, where ``all_classes`` would prompt unlabelled
            structures as absent, this gives a step several of a crop's structures (a decoder shared by the prompts
            then runs once per crop). 1: the single prompt. Not with ``all_classes``.
        absent_exclusions: per folder name (the item's ``dataset_key``), class values never prompted as absent on
            its items: structures its labels do not mark but its images may hold
            (:func:`~bundle.data.suite_absent_exclusions`). Items of other folders, or untagged, use every class.
        dataset_key: the entry naming the item's folder (set by the suite's datalist).
        folder_classes: per folder name, the class values its labels mark (``{name: values}``, e.g. the values of
            :func:`~bundle.data.suite_label_maps`). With ``own_absent_prob``, absent prompts favour them.
        own_absent_prob: probability that an absent prompt is one of the item's own folder's classes that the crop
            does not hold (when there is one), rather than any absent class. A "left ventricle" prompt on a crop of
            cardiac lung or liver is the false positive that whole-volume inference meets; among 17 suite classes a
            uniform choice draws such an example for about 2 % of cardiac crops. 0 keeps the uniform choice.
        allow_missing_keys: don't raise an exception when a key is missing.

    Raises:
        ValueError: when ``class_names`` is empty or holds 0, ``absent_prob`` or ``own_absent_prob`` is outside
            ``[0, 1]``, ``folder_classes`` names a value outside ``class_names``, or
            ``all_classes`` meets ``absent_exclusions`` that exclude a class (prompting every class would give
            those possibly present structures empty targets), or ``num_prompts`` is below 1, above the number of
            classes or set with ``all_classes``; when called, naming the label file, when the map holds values
            outside ``class_names`` and background, or fewer than ``num_prompts`` classes can be prompted.
    """

    def __init__(
        self,
        keys: KeysCollection,
        class_names: Mapping[int, str],
        target_key: str = "target",
        prompt_key: str = "prompt",
        class_key: str = "prompt_class",
        absent_prob: float = 0.1,
        all_classes: bool = False,
        absent_exclusions: Mapping[str, Sequence[int]] | None = None,
        dataset_key: str = "dataset",
        folder_classes: Mapping[str, Collection[int]] | None = None,
        own_absent_prob: float = 0.0,
        num_prompts: int = 1,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.absent_exclusions = {str(k): {int(c) for c in v} for k, v in (absent_exclusions or {}).items()}
        self.dataset_key = dataset_key
        self.all_classes = bool(all_classes)
        excluding = sorted(k for k, v in self.absent_exclusions.items() if v)
        if self.all_classes and excluding:
            raise ValueError(
                f"all_classes prompts every class with its target, but the images of {excluding} may hold classes "
                "they do not label (absent_exclusions): their empty targets would teach the model to miss them. "
                "Train a suite with one prompt per sample (all_prompts false)."
            )
        if not class_names:
            raise ValueError("RandPromptd needs at least one class name")
        if 0 in class_names:
            raise ValueError("class 0 is the background and cannot be prompted")
        if not 0.0 <= absent_prob <= 1.0:
            raise ValueError(f"absent_prob must be in [0, 1], got {absent_prob}")
        if not 0.0 <= own_absent_prob <= 1.0:
            raise ValueError(f"own_absent_prob must be in [0, 1], got {own_absent_prob}")
        self.class_names = {int(k): normalize_prompt(v) for k, v in class_names.items()}
        self.num_prompts = int(num_prompts)
        if not 1 <= self.num_prompts <= len(self.class_names):
            raise ValueError(f"num_prompts must be in [1, {len(self.class_names)}] (the classes), got {num_prompts}")
        if self.num_prompts > 1 and self.all_classes:
            raise ValueError("num_prompts > 1 and all_classes both choose the prompts: set one of them")
        self.folder_classes = {str(k): {int(c) for c in v} for k, v in (folder_classes or {}).items()}
        unknown = sorted({c for v in self.folder_classes.values() for c in v} - set(self.class_names))
        if unknown:
            raise ValueError(f"folder_classes name class values {unknown} that are not in class_names")
        self.own_absent_prob = own_absent_prob
        self.target_key, self.prompt_key, self.class_key = target_key, prompt_key, class_key
        self.absent_prob = absent_prob
        self._choice: int | None = None
        self._choices: list[int] = []

    def randomize(  # type: ignore[override]
        self, present: Sequence[int], excluded: Collection[int] = (), own: Collection[int] = ()
    ) -> None:
        """Choose the class to prompt: an absent one with probability ``absent_prob`` (always when no class is
        present), else one of ``present``, uniformly. An absent prompt is one of ``own`` with probability
        ``own_absent_prob``, when ``own`` holds an absent class.

        Args:
            present: the class values (of ``class_names``) present in the map.
            excluded: class values that are not absent candidates (unlabelled but possibly there).
            own: the class values the item's folder labels.
        """
        absent = [c for c in self.class_names if c not in present and c not in excluded]
        if not present and not absent:  # an empty crop of a folder whose every other class is excluded
            absent = [c for c in self.class_names if c not in present]
        if absent and (not present or self.R.rand() < self.absent_prob):
            self._choice = self._choose_absent(absent, own)
        else:
            self._choice = int(self.R.choice(list(present)))

    def _choose_absent(self, absent: Sequence[int], own: Collection[int]) -> int:
        """One of ``absent``: one of ``own`` among them with probability ``own_absent_prob``, when there is one."""
        own_absent = [c for c in absent if c in own]
        if own_absent and self.own_absent_prob > 0 and self.R.rand() < self.own_absent_prob:
            return int(self.R.choice(own_absent))
        return int(self.R.choice(absent))

    def randomize_prompts(
        self, present: Sequence[int], excluded: Collection[int] = (), own: Collection[int] = ()
    ) -> None:
        """Choose ``num_prompts`` distinct classes, slot by slot: an absent one with probability ``absent_prob``
        while present ones are left too (always when none is), one of ``own`` among them with probability
        ``own_absent_prob``; else one of ``present``. Fewer candidates than slots leave :attr:`_choices` short.

        Args:
            present, excluded, own: as for :meth:`randomize`.
        """
        left_present = [int(c) for c in present]
        left_absent = [c for c in self.class_names if c not in left_present and c not in excluded]
        self._choices = []
        while len(self._choices) < self.num_prompts and (left_present or left_absent):
            if left_absent and (not left_present or self.R.rand() < self.absent_prob):
                choice = self._choose_absent(left_absent, own)
                left_absent.remove(choice)
            else:
                choice = int(self.R.choice(left_present))
                left_present.remove(choice)
            self._choices.append(choice)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """
        Args:
            data: a dictionary item holding the label map under each key.

        Returns:
            A shallow copy of ``data`` with ``target_key`` (``[1, *S]`` float32; ``[K, *S]`` with ``all_classes``),
            ``prompt_key`` and ``class_key`` set (for the last key).

        Raises:
            ValueError: naming the label file, when the map holds values outside ``class_names`` and background.
        """
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
            label = torch.as_tensor(label)
            if label.dim() > 1 and label.shape[0] == 1:
                label = label[0]
            if self.all_classes:
                chosen = list(self.class_names)
                d[self.target_key] = torch.stack([(label == c).float() for c in chosen])
                d[self.prompt_key] = [self.class_names[c] for c in chosen]
                d[self.class_key] = torch.tensor(chosen, dtype=torch.long)
                continue
            present = [int(v) for v in values if int(v) in self.class_names]
            folder = str(d.get(self.dataset_key))
            excluded, own = self.absent_exclusions.get(folder, ()), self.folder_classes.get(folder, ())
            if self.num_prompts > 1:
                self.randomize_prompts(present, excluded, own)
                if len(self._choices) < self.num_prompts:
                    raise ValueError(
                        f"{source_name(d, key)}: {self.num_prompts} prompts asked, but only {len(self._choices)} "
                        f"classes can be prompted (present or absent and not excluded: {self._choices})"
                    )
                d[self.target_key] = torch.stack([(label == c).float() for c in self._choices])
                d[self.prompt_key] = [self.class_names[c] for c in self._choices]
                d[self.class_key] = torch.tensor(self._choices, dtype=torch.long)
                continue
            self.randomize(present, excluded, own)
            assert self._choice is not None
            d[self.target_key] = (label == self._choice).float()[None]
            d[self.prompt_key] = self.class_names[self._choice]
            d[self.class_key] = self._choice
        return d


class EmbedPromptd(MapTransform):
    """Replaces prompt text with its embedding from a :class:`~bundle.text.PromptEmbeddingTable`.

    Args:
        keys: the prompt entries: a string, or a list of strings (one embedding each).
        table: the prompt table (unknown prompts are encoded when it has an encoder, else a clear error).
        embedding_key: where the embedding goes: ``[embed_dim]`` for one prompt, ``[N, embed_dim]`` for a list.
        allow_missing_keys: don't raise an exception when a key is missing.
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

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """
        Args:
            data: a dictionary item holding prompt text under each key.

        Returns:
            A shallow copy of ``data`` with ``embedding_key`` set: ``[embed_dim]`` for a string, ``[N, embed_dim]``
            for ``N`` prompts.

        Raises:
            UnknownPromptError: when a prompt is not in the table and the table has no encoder.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            prompts = d[key]
            if isinstance(prompts, str):
                d[self.embedding_key] = self.table([prompts])[0]
            else:
                as_list: list[str] = [str(p) for p in np.asarray(prompts, dtype=object).ravel()]
                d[self.embedding_key] = self.table(as_list)
        return d
