"""A frozen SAM2 teacher: slice-by-slice box-prompted masks of a structure, cached on disk (towards issue #4).

:class:`SAM2Teacher` builds a SAM2 image model from one of the ``sam2`` package's configs and a checkpoint file
(sam2.1 tiny/small/base+/large, or a fine-tune such as MedSAM2 in the same format) at a chosen image size, frozen
and in eval mode. Nothing is ever downloaded: the checkpoint is a path (SAM2's weights come from
https://github.com/facebookresearch/sam2, "Download Checkpoints"). :meth:`SAM2Teacher.volume` prompts SAM2 on
every slice of a volume along an axis with the bounding box of a mask on that slice and returns the teacher's mask
probabilities and SAM2's predicted IoU per slice. :class:`TeacherCache` stores those volumes keyed by case, class,
checkpoint hash and teacher settings, so they are computed once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, Hashable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from bundle.atomic import atomic_path

__all__ = ["SAM2Teacher", "TeacherCache", "build_teacher", "TeacherTargetsd", "SelectTeacherd", "file_sha256"]

PathLike = Union[str, os.PathLike]

logger = logging.getLogger(__name__)


def file_sha256(path: PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _predictor_class():
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    class SizedPredictor(SAM2ImagePredictor):
        """SAM2's image predictor for any model image size (its feature-map sizes are written for 1024)."""

        def __init__(self, model: Any, **kwargs: Any) -> None:
            super().__init__(model, **kwargs)
            s = int(model.image_size)
            self._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]

    return SizedPredictor


class SAM2Teacher:
    """A frozen SAM2 image model that segments a structure slice by slice from box prompts.

    Args:
        checkpoint: a SAM2 checkpoint file (``{"model": state_dict}``, as released); a missing file is an error,
            never a download.
        config: the ``sam2`` package config, e.g. ``"configs/sam2.1/sam2.1_hiera_t.yaml"``.
        image_size: SAM2's input size (256, 512 or 1024); slices are resized to it by SAM2's transforms.
        axis: the slice axis of ``[X, Y, Z]`` volumes (2: axial for RAS-oriented volumes).
        box_margin: voxels added around each slice's bounding box.
        device: where SAM2 runs.
    """

    def __init__(
        self,
        checkpoint: PathLike,
        config: str = "configs/sam2.1/sam2.1_hiera_t.yaml",
        image_size: int = 512,
        axis: int = 2,
        box_margin: int = 2,
        device: Union[str, torch.device] = "cpu",
    ) -> None:
        from sam2.build_sam import build_sam2

        self.checkpoint = Path(checkpoint)
        if not self.checkpoint.is_file():
            raise FileNotFoundError(
                f"SAM2 checkpoint {self.checkpoint} not found; SegOne never downloads weights. Get a SAM2 checkpoint "
                "(e.g. sam2.1_hiera_tiny.pt from https://github.com/facebookresearch/sam2) and set its path."
            )
        if image_size % 16 != 0:
            raise ValueError(f"SAM2 image_size must be a multiple of 16, got {image_size}")
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
        try:
            model = build_sam2(config, str(self.checkpoint), device=str(device),
                               hydra_overrides_extra=[f"++model.image_size={int(image_size)}"])
        except RuntimeError as e:  # SAM2 logs the mismatching keys and raises a bare RuntimeError
            raise RuntimeError(f"{self.checkpoint} does not fit SAM2 config {config} ({e or 'state dict mismatch'})") from e
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = model.eval()
        self.predictor = _predictor_class()(self.model)
        self.config = config
        self.image_size = int(image_size)
        self.axis = axis
        self.box_margin = box_margin
        self._checkpoint_hash: Optional[str] = None

    @property
    def checkpoint_hash(self) -> str:
        if self._checkpoint_hash is None:
            self._checkpoint_hash = file_sha256(self.checkpoint)
        return self._checkpoint_hash

    @property
    def settings(self) -> Dict[str, Any]:
        """Everything that changes the teacher's output (the cache key's teacher part)."""
        return {"checkpoint_sha256": self.checkpoint_hash, "config": self.config, "image_size": self.image_size,
                "axis": self.axis, "box_margin": self.box_margin, "prompt": "box"}

    @staticmethod
    def _to_rgb(slice_2d: np.ndarray) -> np.ndarray:
        """A slice as the uint8 RGB image SAM2 expects, intensities scaled by the 0.5-99.5 percentiles."""
        lo, hi = np.percentile(slice_2d, [0.5, 99.5]) if slice_2d.size else (0.0, 1.0)
        scaled = np.clip((slice_2d - lo) / max(hi - lo, 1e-6), 0, 1) * 255
        return np.repeat(scaled.astype(np.uint8)[..., None], 3, axis=-1)

    @torch.inference_mode()
    def volume(self, image: np.ndarray, mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Teacher mask probabilities for ``mask``'s structure, slice by slice.

        Args:
            image: ``[X, Y, Z]`` intensities.
            mask: ``[X, Y, Z]`` boolean mask of the structure (ground truth, or the student's own prediction); each
                slice where it is present is prompted with its bounding box.

        Returns:
            ``(probabilities [X, Y, Z] float32 in [0, 1], predicted IoU per slice [n_slices] float32)``; slices
            without the structure get probability 0 and IoU NaN (no prompt, no teacher opinion).
        """
        image, mask = np.asarray(image, np.float32), np.asarray(mask).astype(bool)
        if image.ndim != 3 or image.shape != mask.shape:
            raise ValueError(f"image and mask must be the same [X, Y, Z] shape, got {image.shape} and {mask.shape}")
        if not np.isfinite(image).all():
            raise ValueError("image contains NaN or Inf")
        img = np.moveaxis(image, self.axis, 0)
        msk = np.moveaxis(mask, self.axis, 0)
        probs = np.zeros(img.shape, np.float32)
        ious = np.full(img.shape[0], np.nan, np.float32)
        for k in range(img.shape[0]):
            if not msk[k].any():
                continue
            rows, cols = np.nonzero(msk[k])  # slice axes (a, b) -> SAM2 image rows a, columns b
            m = self.box_margin
            box = np.array([max(cols.min() - m, 0), max(rows.min() - m, 0),
                            min(cols.max() + m, msk.shape[2] - 1), min(rows.max() + m, msk.shape[1] - 1)], np.float32)
            self.predictor.set_image(self._to_rgb(img[k]))
            logits, iou, _ = self.predictor.predict(box=box, multimask_output=False, return_logits=True)
            probs[k] = 1.0 / (1.0 + np.exp(-logits[0].astype(np.float32)))
            ious[k] = float(iou[0])
        return np.moveaxis(probs, 0, self.axis), ious


class TeacherCache:
    """Teacher volumes on disk, one ``.npz`` per (case, class, teacher settings), written atomically.

    The file name is the SHA-256 of the key, so a changed checkpoint, image size, axis, margin or prompt mode
    misses the cache (and the old entries are simply no longer used). :meth:`get_or_compute` names a case by its
    name and a digest of the image and mask it is given (:meth:`case_key`), so an edited image or label under the
    same file name, or a case of another data set with the same name, misses too.

    Args:
        directory: the cache folder.

    Attributes:
        hits, misses: :meth:`get_or_compute` calls answered from disk and by SAM2.
    """

    def __init__(self, directory: PathLike) -> None:
        self.directory = Path(directory)
        self.hits = 0
        self.misses = 0

    @staticmethod
    def case_key(case: str, image: np.ndarray, mask: np.ndarray) -> str:
        """``"<case>#<digest>"``: the case name and the SHA-256 (16 hex digits) of the teacher's inputs."""
        digest = hashlib.sha256(np.ascontiguousarray(image, np.float32).tobytes())
        digest.update(np.ascontiguousarray(mask, bool).tobytes())
        return f"{case}#{digest.hexdigest()[:16]}"

    @staticmethod
    def key(case: str, label: int, settings: Dict[str, Any]) -> str:
        text = json.dumps({"case": str(case), "class": int(label), "teacher": settings}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def path(self, case: str, label: int, settings: Dict[str, Any]) -> Path:
        return self.directory / f"{self.key(case, label, settings)}.npz"

    def get(self, case: str, label: int, settings: Dict[str, Any]) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        path = self.path(case, label, settings)
        if not path.is_file():
            return None
        with np.load(path) as data:
            return data["probs"].astype(np.float32), data["iou"].astype(np.float32)

    def put(self, case: str, label: int, settings: Dict[str, Any], probs: np.ndarray, iou: np.ndarray) -> Path:
        path = self.path(case, label, settings)
        with atomic_path(path, suffix=".npz") as tmp:
            # float16 halves the size; teacher probabilities need no more precision
            np.savez_compressed(tmp, probs=probs.astype(np.float16), iou=iou.astype(np.float32))
        return path

    def get_or_compute(self, teacher: SAM2Teacher, case: str, label: int, image: np.ndarray,
                       mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """The cached teacher volume, or SAM2's, computed now and stored."""
        settings, key = teacher.settings, self.case_key(case, image, mask)
        cached = self.get(key, label, settings)
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        probs, iou = teacher.volume(image, mask)
        self.put(key, label, settings, probs, iou)
        return probs, iou


def build_teacher(settings: Mapping[str, Any]) -> Optional[SAM2Teacher]:
    """The teacher of train.json's ``teacher`` section, or ``None`` (logged once) when no checkpoint is set."""
    checkpoint = settings.get("checkpoint")
    if not checkpoint:
        logger.info("SAM2 teacher: off (teacher#checkpoint is not set); training without the consistency term")
        return None
    teacher = SAM2Teacher(checkpoint, settings.get("config", "configs/sam2.1/sam2.1_hiera_t.yaml"),
                          image_size=int(settings.get("image_size", 512)), axis=int(settings.get("axis", 2)),
                          box_margin=int(settings.get("box_margin", 2)))
    logger.info("SAM2 teacher: %s (%s, image size %d), consistency weight %s, IoU threshold %s", checkpoint,
                teacher.config, teacher.image_size, settings.get("weight"), settings.get("iou_threshold"))
    return teacher


class TeacherTargetsd(MapTransform):
    """Adds the teacher's mask probabilities and per-voxel trust weights for every class of a labelled case.

    For each class value ``v`` it takes the teacher volume of ``label == v`` (from the cache, or SAM2 now) and
    writes ``teacher_key`` ``[K, *S]`` (probabilities) and ``weight_key`` ``[K, *S]`` (1 on slices where SAM2's
    predicted IoU reaches ``iou_threshold``, else 0), in the image's geometry, so later spatial transforms move
    them with the image. With ``teacher=None`` it does nothing (the consistency term is off).

    Args:
        keys: the image key (``[1, X, Y, Z]``).
        teacher: a :class:`SAM2Teacher`, or ``None``.
        cache_dir: the :class:`TeacherCache` folder.
        class_values: the label values, in ``channel_def`` order.
        label_key: the multi-label map ``[1, X, Y, Z]``.
        iou_threshold: slices whose predicted IoU is below it get weight 0.
    """

    def __init__(
        self,
        keys: KeysCollection,
        teacher: Optional[SAM2Teacher],
        cache_dir: PathLike,
        class_values: Sequence[int],
        label_key: str = "label",
        teacher_key: str = "teacher",
        weight_key: str = "teacher_weight",
        iou_threshold: float = 0.5,
    ) -> None:
        super().__init__(keys)
        self.teacher = teacher
        self.cache = TeacherCache(cache_dir)
        self.class_values = [int(v) for v in class_values]
        self.label_key, self.teacher_key, self.weight_key = label_key, teacher_key, weight_key
        self.iou_threshold = float(iou_threshold)

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        d = dict(data)
        if self.teacher is None:
            return d
        for key in self.key_iterator(d):
            image = d[key]
            if image.shape[0] != 1 or image.dim() != 4:
                raise ValueError(f"TeacherTargetsd needs a single-channel 3D image [1, X, Y, Z], got {tuple(image.shape)}")
            case = Path(str(getattr(image, "meta", {}).get("filename_or_obj", ""))).name or "unnamed"
            img = torch.as_tensor(image)[0].detach().cpu().numpy()
            lab = torch.as_tensor(d[self.label_key])[0].detach().cpu().numpy()
            probs, weights = [], []
            for value in self.class_values:
                p, iou = self.cache.get_or_compute(self.teacher, case, value, img, lab == value)
                trusted = np.nan_to_num(iou, nan=0.0) >= self.iou_threshold
                shape = [1, 1, 1]
                shape[self.teacher.axis] = -1
                probs.append(p)
                weights.append(np.broadcast_to(trusted.reshape(shape), p.shape).astype(np.float32))
            d[self.teacher_key] = _like(image, np.stack(probs))
            d[self.weight_key] = _like(image, np.stack(weights))
        return d


class SelectTeacherd(MapTransform):
    """Keeps the teacher channel of the class that :class:`~bundle.transforms.RandPromptd` prompted.

    An absent class (empty target) keeps a zero weight: the teacher has no opinion on it.
    """

    def __init__(self, keys: KeysCollection, class_values: Sequence[int], class_key: str = "prompt_class",
                 allow_missing_keys: bool = True) -> None:
        super().__init__(keys, allow_missing_keys)
        self.index = {int(v): i for i, v in enumerate(class_values)}
        self.class_key = class_key

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            k = self.index[int(d[self.class_key])]
            d[key] = d[key][k : k + 1]
        return d


def _like(reference: Any, array: np.ndarray) -> Any:
    """``array`` as a tensor with ``reference``'s metadata (affine, applied operations) when it is a MetaTensor."""
    from monai.data import MetaTensor

    tensor = torch.as_tensor(array, dtype=torch.float32)
    if isinstance(reference, MetaTensor):
        return MetaTensor(tensor, affine=reference.affine.clone(), meta=dict(reference.meta),
                          applied_operations=list(reference.applied_operations))
    return tensor
