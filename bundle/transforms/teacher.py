"""Training transforms that add the SAM2 teacher's masks and trust weights to a case."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import look_up_option

from bundle.teacher.cache import TeacherCache
from bundle.teacher.sam2 import SAM2Teacher
from bundle.teacher.student import PROMPT_SOURCES, StudentMasks
from bundle.utils.io import PathLike
from bundle.utils.metadata import source_name

logger = logging.getLogger(__name__)


__all__ = ["TeacherTargetsd", "SelectTeacherd"]


class TeacherTargetsd(MapTransform):
    """Adds the teacher's mask probabilities and per-voxel trust weights for every class of a case.

    For each class value ``v`` it takes the teacher volume of the mask ``== v`` (from the cache, or SAM2 now) and
    writes ``teacher_key`` ``[K, *S]`` (probabilities) and ``weight_key`` ``[K, *S]`` (1 on slices where SAM2's
    predicted IoU reaches ``iou_threshold``, else 0), in the image's geometry, so later spatial transforms move
    them with the image. The mask is the label map (``prompt_source="label"``) or the student's prediction
    (``"student"``). A case without a label (``"student"`` only) gets a pseudo-label map from the trusted teacher
    masks (probability >= 0.5, the most probable class where they overlap) for the diffusion's noisy input, and
    ``supervised_key`` 0 so the loss keeps only the teacher term; labelled cases get 1. With ``teacher=None`` it
    does nothing (the consistency term is off).

    Args:
        keys: the image key (``[1, X, Y, Z]``, or ``[1, X, Y]`` in 2D).
        teacher: a :class:`SAM2Teacher`, or ``None``.
        cache_dir: the :class:`TeacherCache` folder.
        class_values: the label values, in ``channel_def`` order (the student's ``k``-th prompt is the ``k``-th).
        label_key: the multi-label map ``[1, *S]``.
        teacher_key: where the teacher probabilities ``[K, *S]`` (float32) go.
        weight_key: where the trust weights ``[K, *S]`` (float32, 0 or 1) go.
        iou_threshold: slices whose predicted IoU is below it get weight 0.
        prompt_source: ``"label"`` or ``"student"``.
        student: the :class:`StudentMasks` of ``"student"`` mode.
        supervised_key: where 1 (labelled) or 0 (unlabelled) goes.

    Raises:
        ValueError: when ``prompt_source`` is not a known option, or is ``"student"`` with a teacher but no
            ``student``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        teacher: SAM2Teacher | None,
        cache_dir: PathLike,
        class_values: Sequence[int],
        label_key: str = "label",
        teacher_key: str = "teacher",
        weight_key: str = "teacher_weight",
        iou_threshold: float = 0.5,
        prompt_source: str = "label",
        student: StudentMasks | None = None,
        supervised_key: str = "supervised",
    ) -> None:
        super().__init__(keys)
        prompt_source = look_up_option(prompt_source, PROMPT_SOURCES)
        if teacher is not None and prompt_source == "student" and student is None:
            raise ValueError("prompt_source 'student' needs a student (bundle.teacher.StudentMasks.from_checkpoint)")
        self.teacher = teacher
        if teacher is None:
            logger.info("SAM2 teacher: off (teacher#checkpoint is not set); training without the consistency term")
        self.cache = TeacherCache(cache_dir)
        self.class_values = [int(v) for v in class_values]
        self.label_key, self.teacher_key, self.weight_key = label_key, teacher_key, weight_key
        self.iou_threshold = float(iou_threshold)
        self.prompt_source, self.student, self.supervised_key = prompt_source, student, supervised_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """
        Args:
            data: a dictionary item with the image ``[1, *S]`` under each key and, when labelled, ``label_key``.

        Returns:
            A shallow copy of ``data`` with ``teacher_key`` and ``weight_key`` (``[K, *S]``, in the image's
            geometry) and ``supervised_key`` (a scalar tensor) set, and ``label_key`` a pseudo-label ``[1, *S]``
            (uint8) for an unlabelled case; ``data``'s entries unchanged when the teacher is off.

        Raises:
            ValueError: naming the image file, when the image is not ``[1, *S]`` 2D or 3D, or has no label while
                the prompts come from labels.
        """
        d = dict(data)
        if self.teacher is None:
            return d
        for key in self.key_iterator(d):
            image = d[key]
            name = source_name(d, key)
            if image.shape[0] != 1 or image.dim() not in (3, 4):
                raise ValueError(
                    f"{name}: the teacher needs a single-channel 2D or 3D image [1, *S], " f"got {tuple(image.shape)}"
                )
            labelled = self.label_key in d
            if not labelled and self.prompt_source == "label":
                raise ValueError(
                    f"{name}: no label to place SAM2's prompts; unlabelled cases need "
                    "teacher_training#prompt_source 'student'"
                )
            case = Path(str(getattr(image, "meta", {}).get("filename_or_obj", ""))).name or "unnamed"
            img = torch.as_tensor(image)[0].detach().cpu().numpy()
            if self.prompt_source == "student":
                assert self.student is not None
                masks = self.student(image)
                masks = {v: masks == k + 1 for k, v in enumerate(self.class_values)}
            else:
                lab = torch.as_tensor(d[self.label_key])[0].detach().cpu().numpy()
                masks = {v: lab == v for v in self.class_values}
            volumes = self.cache.get_or_compute_many(self.teacher, case, img, masks)
            probs, weights = [], []
            for value in self.class_values:
                p, iou = volumes[value]
                # unprompted slices (IoU NaN) carry no teacher opinion, whatever the threshold
                trusted = np.isfinite(iou) & (np.nan_to_num(iou, nan=0.0) >= self.iou_threshold)
                shape = [1] * p.ndim
                if p.ndim == 3:
                    shape[self.teacher.axis] = -1
                probs.append(p)
                weights.append(np.broadcast_to(trusted.reshape(shape), p.shape).astype(np.float32))
            teacher, weight = np.stack(probs), np.stack(weights)
            d[self.teacher_key] = _like(image, teacher)
            d[self.weight_key] = _like(image, weight)
            if not labelled:
                trusted = np.where(weight > 0, teacher, 0.0)
                pseudo = np.where(trusted.max(0) >= 0.5, np.asarray(self.class_values)[trusted.argmax(0)], 0)
                d[self.label_key] = _like(image, pseudo[None], torch.uint8)
            d[self.supervised_key] = torch.tensor(1.0 if labelled else 0.0)
        return d


class SelectTeacherd(MapTransform):
    """Keeps the teacher channel of the class that :class:`~bundle.transforms.RandPromptd` prompted.

    An absent class (empty target) keeps a zero weight: the teacher has no opinion on it.

    Args:
        keys: the teacher entries, ``[K, *S]`` in ``class_values`` order (``teacher`` and ``teacher_weight``);
            each becomes ``[1, *S]``.
        class_values: the label values, in the order of the entries' channels.
        class_key: where the prompted label value is (:class:`~bundle.transforms.RandPromptd`'s ``class_key``).
        allow_missing_keys: don't raise an exception when a key is missing (the default: with the teacher off
            there are no teacher entries).
    """

    def __init__(
        self,
        keys: KeysCollection,
        class_values: Sequence[int],
        class_key: str = "prompt_class",
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.index = {int(v): i for i, v in enumerate(class_values)}
        self.class_key = class_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """
        Args:
            data: a dictionary item with the teacher entries ``[K, *S]`` and the prompted class under ``class_key``.

        Returns:
            A shallow copy of ``data`` with each teacher entry cut to the prompted class's channel, ``[1, *S]``.

        Raises:
            ValueError: naming the teacher file, when the item was prompted with several classes.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            prompted = torch.as_tensor(d[self.class_key])
            if prompted.numel() != 1:
                raise ValueError(
                    f"{source_name(d, key)}: the teacher term needs one prompt per item, got {prompted.numel()} "
                    "(all_prompts or prompts_per_image > 1): train with the teacher and one prompt per crop"
                )
            k = self.index[int(prompted)]
            d[key] = d[key][k : k + 1]
        return d


def _like(reference: Any, array: np.ndarray, dtype: torch.dtype = torch.float32) -> Any:
    """``array`` as a tensor with ``reference``'s metadata (affine, applied operations) when it is a MetaTensor."""
    from monai.data import MetaTensor

    tensor = torch.as_tensor(array, dtype=dtype)
    if isinstance(reference, MetaTensor):
        return MetaTensor(
            tensor,
            affine=reference.affine.clone(),
            meta=dict(reference.meta),
            applied_operations=list(reference.applied_operations),
        )
    return tensor
