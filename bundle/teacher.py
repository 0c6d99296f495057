"""A frozen SAM2 teacher: slice-by-slice prompted masks of a structure, cached on disk (issue #4).

:class:`SAM2Teacher` builds a SAM2 image model from one of the ``sam2`` package's configs and a checkpoint file
(sam2.1 tiny/small/base+/large, or a fine-tune such as MedSAM2 in the same format) at a chosen image size, frozen
and in eval mode. Nothing is ever downloaded: the checkpoint is a path (SAM2's weights come from
https://github.com/facebookresearch/sam2, "Download Checkpoints"). :meth:`SAM2Teacher.volume` prompts SAM2 on
every slice of a 3D volume along an axis (or on a 2D image) with the bounding box of a mask (per slice, or the
mask's 3D box) and/or points sampled from it, and returns the teacher's mask probabilities and SAM2's predicted
IoU per slice. :class:`TeacherCache` stores those volumes keyed by case, class, checkpoint hash and teacher
settings, so they are computed once.

The mask that prompts SAM2 comes from the ground truth (``prompt_source="label"``) or from a trained SegOne
student's own prediction (``prompt_source="student"``, :class:`StudentMasks`), which lets the teacher regularise
cases that have no label (:func:`unlabelled_datalist`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Any, Dict, Hashable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from bundle.atomic import atomic_path
from bundle.transforms import source_name

__all__ = [
    "SAM2Teacher",
    "TeacherCache",
    "StudentMasks",
    "build_teacher",
    "build_student",
    "unlabelled_datalist",
    "TeacherTargetsd",
    "SelectTeacherd",
    "file_sha256",
    "PROMPTS",
    "BOX_MODES",
    "PROMPT_SOURCES",
]

PROMPTS = ("box", "points", "box+points")
BOX_MODES = ("slice", "volume")
PROMPT_SOURCES = ("label", "student")

PathLike = Union[str, os.PathLike]

logger = logging.getLogger(__name__)


def file_sha256(path: PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _QuietSAM2Progress(logging.Filter):
    """Drops SAM2's per-image progress lines, which it logs at INFO on the root logger (three per slice, so tens of
    thousands while a data set's teacher volumes are computed); everything else passes."""

    MESSAGES = ("For numpy array image, we assume (HxWxC) format", "Computing image embeddings for the provided image",
                "Image embeddings computed.")

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "root" and str(record.msg).startswith(self.MESSAGES))


def _quiet_sam2_progress() -> None:
    root = logging.getLogger()
    if not any(isinstance(f, _QuietSAM2Progress) for f in root.filters):
        root.addFilter(_QuietSAM2Progress())


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
        axis: the slice axis of ``[X, Y, Z]`` volumes (2: axial for RAS-oriented volumes); 2D images are one slice.
        box_margin: voxels added around each bounding box.
        prompt: ``"box"`` (the mask's bounding box), ``"points"`` (``num_points`` positive points sampled from the
            mask) or ``"box+points"`` (both in one prompt).
        num_points: points per slice for the point prompts (fewer when the slice's mask has fewer pixels).
        box_mode: ``"slice"``: each slice's own box, only slices where the mask is present are prompted;
            ``"volume"``: the mask's 3D bounding box, the same in-plane box on every slice of its extent along
            ``axis`` (steadier when the mask is a noisy prediction with holes or stray slices).
        seed: seeds the point sampling (with the slice index), so a mask always gives the same prompts.
        device: where SAM2 runs.
    """

    def __init__(
        self,
        checkpoint: PathLike,
        config: str = "configs/sam2.1/sam2.1_hiera_t.yaml",
        image_size: int = 512,
        axis: int = 2,
        box_margin: int = 2,
        prompt: str = "box",
        num_points: int = 3,
        box_mode: str = "slice",
        seed: int = 0,
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
        if prompt not in PROMPTS:
            raise ValueError(f"prompt must be one of {PROMPTS}, got {prompt!r}")
        if box_mode not in BOX_MODES:
            raise ValueError(f"box_mode must be one of {BOX_MODES}, got {box_mode!r}")
        if "points" in prompt and num_points < 1:
            raise ValueError(f"point prompts need num_points >= 1, got {num_points}")
        try:
            model = build_sam2(config, str(self.checkpoint), device=str(device),
                               hydra_overrides_extra=[f"++model.image_size={int(image_size)}"])
        except RuntimeError as e:  # SAM2 logs the mismatching keys and raises a bare RuntimeError
            raise RuntimeError(f"{self.checkpoint} does not fit SAM2 config {config} ({e or 'state dict mismatch'})") from e
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = model.eval()
        self.predictor = _predictor_class()(self.model)
        _quiet_sam2_progress()
        self.config = config
        self.image_size = int(image_size)
        self.axis = axis
        self.box_margin = box_margin
        self.prompt, self.num_points, self.box_mode, self.seed = prompt, int(num_points), box_mode, int(seed)
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
                "axis": self.axis, "box_margin": self.box_margin, "prompt": self.prompt, "box_mode": self.box_mode,
                "num_points": self.num_points if "points" in self.prompt else 0,
                "seed": self.seed if "points" in self.prompt else 0}

    @staticmethod
    def _to_rgb(slice_2d: np.ndarray) -> np.ndarray:
        """A slice as the uint8 RGB image SAM2 expects, intensities scaled by the 0.5-99.5 percentiles."""
        lo, hi = np.percentile(slice_2d, [0.5, 99.5]) if slice_2d.size else (0.0, 1.0)
        scaled = np.clip((slice_2d - lo) / max(hi - lo, 1e-6), 0, 1) * 255
        return np.repeat(scaled.astype(np.uint8)[..., None], 3, axis=-1)

    def _box(self, rows: np.ndarray, cols: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
        """SAM2's ``[x0, y0, x1, y1]`` box (x: columns) around pixels, widened by ``box_margin``, inside the image."""
        m = self.box_margin
        return np.array([max(cols.min() - m, 0), max(rows.min() - m, 0),
                         min(cols.max() + m, shape[1] - 1), min(rows.max() + m, shape[0] - 1)], np.float32)

    def _points(self, rows: np.ndarray, cols: np.ndarray, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """``num_points`` positive points drawn without replacement from the slice's mask pixels, as ``(x, y)``."""
        rng = np.random.default_rng([self.seed, index])
        pick = rng.choice(rows.size, size=min(self.num_points, rows.size), replace=False)
        return np.stack([cols[pick], rows[pick]], axis=1).astype(np.float32), np.ones(pick.size, np.int32)

    def volume(self, image: np.ndarray, mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Teacher mask probabilities for ``mask``'s structure, slice by slice.

        Args:
            image: ``[X, Y, Z]`` intensities, or a 2D ``[X, Y]`` image (one slice).
            mask: boolean mask of the structure, the shape of ``image`` (ground truth, or the student's own
                prediction); it places the prompts (see ``prompt`` and ``box_mode``).

        Returns:
            ``(probabilities, predicted IoU per slice)``: probabilities in [0, 1] (float32, the shape of
            ``image``); IoU ``[n_slices]`` float32 (``[1]`` for a 2D image). Slices without a prompt get
            probability 0 and IoU NaN (no teacher opinion).
        """
        return self.volumes(image, {0: mask})[0]

    @torch.inference_mode()
    def volumes(self, image: np.ndarray, masks: Mapping[int, np.ndarray]) -> Dict[int, Tuple[np.ndarray, np.ndarray]]:
        """:meth:`volume` for several structures of one image at once: ``{class: (probabilities, IoU)}``.

        SAM2's image encoder, most of its cost, runs once per slice for all the structures prompted there.
        """
        image = np.asarray(image, np.float32)
        masks = {c: np.asarray(m).astype(bool) for c, m in masks.items()}
        if image.ndim not in (2, 3) or any(m.shape != image.shape for m in masks.values()):
            shapes = ", ".join(str(m.shape) for m in masks.values())
            raise ValueError(f"image and mask must be the same [X, Y, Z] or [X, Y] shape, got {image.shape} and {shapes}")
        if not np.isfinite(image).all():
            raise ValueError("image contains NaN or Inf")
        if image.ndim == 2:  # a 2D image is one slice, whatever the axis
            out = self._slices(image[None], {c: m[None] for c, m in masks.items()})
            return {c: (p[0], iou) for c, (p, iou) in out.items()}
        out = self._slices(np.moveaxis(image, self.axis, 0), {c: np.moveaxis(m, self.axis, 0) for c, m in masks.items()})
        return {c: (np.moveaxis(p, 0, self.axis), iou) for c, (p, iou) in out.items()}

    def _prompts(self, msk: np.ndarray) -> Dict[int, Dict[str, Any]]:
        """``{slice: SAM2 prompt kwargs}`` of one structure's ``[n_slices, A, B]`` mask (slice axis first)."""
        prompted = msk.any(axis=(1, 2))
        volume_box = None
        if self.box_mode == "volume" and prompted.any():
            ks = np.nonzero(prompted)[0]
            prompted[ks.min() : ks.max() + 1] = True  # every slice of the 3D box's extent, gaps included
            rows, cols = np.nonzero(msk.any(axis=0))
            volume_box = self._box(rows, cols, msk.shape[1:])
        prompts: Dict[int, Dict[str, Any]] = {}
        for k in np.nonzero(prompted)[0]:
            rows, cols = np.nonzero(msk[k])  # slice axes (a, b) -> SAM2 image rows a, columns b
            kwargs: Dict[str, Any] = {}
            if "box" in self.prompt:
                kwargs["box"] = volume_box if volume_box is not None else self._box(rows, cols, msk.shape[1:])
            if "points" in self.prompt and rows.size:
                kwargs["point_coords"], kwargs["point_labels"] = self._points(rows, cols, int(k))
            if kwargs:  # point prompts on a gap slice of a 3D box: nothing to place
                prompts[int(k)] = kwargs
        return prompts

    def _slices(self, img: np.ndarray, msks: Mapping[int, np.ndarray]) -> Dict[int, Tuple[np.ndarray, np.ndarray]]:
        """:meth:`volumes` on ``[n_slices, A, B]`` arrays (slice axis first)."""
        prompts = {c: self._prompts(m) for c, m in msks.items()}
        out = {c: (np.zeros(img.shape, np.float32), np.full(img.shape[0], np.nan, np.float32)) for c in msks}
        for k in sorted(set().union(*(p.keys() for p in prompts.values()))):
            self.predictor.set_image(self._to_rgb(img[k]))
            for c, per_slice in prompts.items():
                if k in per_slice:
                    logits, iou, _ = self.predictor.predict(multimask_output=False, return_logits=True, **per_slice[k])
                    out[c][0][k] = 1.0 / (1.0 + np.exp(-logits[0].astype(np.float32)))
                    out[c][1][k] = float(iou[0])
        return out


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
        return TeacherCache._case_key(case, TeacherCache._image_digest(image), mask)

    @staticmethod
    def _image_digest(image: np.ndarray) -> "hashlib._Hash":
        return hashlib.sha256(np.ascontiguousarray(image, np.float32).tobytes())

    @staticmethod
    def _case_key(case: str, image_digest: "hashlib._Hash", mask: np.ndarray) -> str:
        digest = image_digest.copy()  # the image is hashed once per case, whatever the number of classes
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
        try:
            with np.load(path) as data:
                return data["probs"].astype(np.float32), data["iou"].astype(np.float32)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:  # a damaged entry is recomputed, not fatal
            logger.warning("teacher cache entry %s is unreadable (%s: %s); computing it again", path,
                           type(e).__name__, e)
            return None

    def put(self, case: str, label: int, settings: Dict[str, Any], probs: np.ndarray, iou: np.ndarray) -> Path:
        path = self.path(case, label, settings)
        with atomic_path(path, suffix=".npz") as tmp:
            # float16 halves the size; teacher probabilities need no more precision
            np.savez_compressed(tmp, probs=probs.astype(np.float16), iou=iou.astype(np.float32))
        return path

    def get_or_compute(self, teacher: SAM2Teacher, case: str, label: int, image: np.ndarray,
                       mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """The cached teacher volume, or SAM2's, computed now and stored."""
        return self.get_or_compute_many(teacher, case, image, {label: mask})[label]

    def get_or_compute_many(self, teacher: SAM2Teacher, case: str, image: np.ndarray,
                            masks: Mapping[int, np.ndarray]) -> Dict[int, Tuple[np.ndarray, np.ndarray]]:
        """:meth:`get_or_compute` for several classes of one case; the missing ones share SAM2's image encoding."""
        settings, image_digest = teacher.settings, self._image_digest(image)
        keys = {label: self._case_key(case, image_digest, mask) for label, mask in masks.items()}
        out: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}
        for label, key in keys.items():
            cached = self.get(key, label, settings)
            if cached is not None:
                out[label] = cached
        self.hits += len(out)
        missing = {label: mask for label, mask in masks.items() if label not in out}
        self.misses += len(missing)
        if missing:
            for label, (probs, iou) in teacher.volumes(image, missing).items():
                self.put(keys[label], label, settings, probs, iou)
                out[label] = (probs, iou)
        return {label: out[label] for label in masks}


def build_teacher(settings: Mapping[str, Any]) -> Optional[SAM2Teacher]:
    """The teacher of train.json's ``teacher`` section, or ``None`` (logged once) when no checkpoint is set."""
    checkpoint = settings.get("checkpoint")
    if not checkpoint:
        logger.info("SAM2 teacher: off (teacher#checkpoint is not set); training without the consistency term")
        return None
    teacher = SAM2Teacher(checkpoint, settings.get("config", "configs/sam2.1/sam2.1_hiera_t.yaml"),
                          image_size=int(settings.get("image_size", 512)), axis=int(settings.get("axis", 2)),
                          box_margin=int(settings.get("box_margin", 2)), prompt=settings.get("prompt", "box"),
                          num_points=int(settings.get("num_points", 3)), box_mode=settings.get("box_mode", "slice"),
                          seed=int(settings.get("seed", 0)))
    logger.info("SAM2 teacher: %s (%s, image size %d, %s prompts from the %s, %s boxes), %s consistency weight %s, "
                "IoU threshold %s", checkpoint, teacher.config, teacher.image_size, teacher.prompt,
                settings.get("prompt_source", "label"), teacher.box_mode, settings.get("loss", "l1"),
                settings.get("weight"), settings.get("iou_threshold"))
    return teacher


class StudentMasks:
    """A trained SegOne's own label map of a case: what places the teacher's prompts in ``"student"`` mode.

    The student is a fixed checkpoint (a previous training run, or the released ``models/model.pt``), not the
    weights being trained: teacher volumes are computed once and cached, which is what makes the teacher cheap on a
    CPU. Re-prompting SAM2 from the live network would cost SAM2's per-slice time at every iteration.

    Args:
        segmenter: a :class:`~bundle.diffusion.PromptedSegmenter` with the student's weights and class prompts.
        roi_size: the sliding-window size.
        overlap: the sliding-window overlap.
        checkpoint: the file the weights came from (for messages).
    """

    def __init__(self, segmenter: torch.nn.Module, roi_size: Sequence[int], overlap: float = 0.25,
                 checkpoint: Optional[PathLike] = None) -> None:
        self.segmenter = segmenter.eval()
        self.roi_size = tuple(int(r) for r in roi_size)
        self.overlap = overlap
        self.checkpoint = checkpoint

    @classmethod
    def from_inference_config(cls, checkpoint: PathLike, bundle_root: PathLike, **overrides: Any) -> "StudentMasks":
        """A student from a SegOne model file with ``configs/inference.json``'s network and window (e.g. the
        released ``models/model.pt``), outside a training run.

        Raises:
            bundle.checkpoint.CheckpointError: naming the file, when it is missing or does not fit the network.
        """
        from monai.bundle import ConfigParser

        from bundle.checkpoint import load_weights

        root = Path(bundle_root)
        parser = ConfigParser()
        parser.read_config(str(root / "configs" / "inference.json"))
        parser.read_meta(str(root / "configs" / "metadata.json"))
        parser.update({"bundle_root": str(root), **overrides})
        segmenter = load_weights(parser.get_parsed_content("network_def"), checkpoint)
        return cls(segmenter, parser["roi_size"], overlap=parser["overlap"], checkpoint=checkpoint)

    @torch.no_grad()
    def __call__(self, image: torch.Tensor) -> np.ndarray:
        """The student's label map ``[*S]`` (int64: 0 background, ``k`` the ``k``-th class prompt) of ``[C, *S]``."""
        from monai.inferers import sliding_window_inference

        x = torch.as_tensor(image).float()[None]
        if len(self.roi_size) != x.dim() - 2:
            raise ValueError(f"student roi_size {self.roi_size} does not fit an image of shape {tuple(image.shape)}")
        probs = sliding_window_inference(x, self.roi_size, 1, self.segmenter, overlap=self.overlap, mode="gaussian")
        return torch.as_tensor(probs)[0].argmax(0).cpu().numpy()


def build_student(settings: Mapping[str, Any], diffusion: torch.nn.Module, roi_size: Sequence[int],
                  num_inference_steps: int = 1) -> Optional[StudentMasks]:
    """The student of ``prompt_source="student"``: ``diffusion``'s architecture with ``teacher#student_checkpoint``.

    Returns ``None`` when the teacher is off or boxes come from the labels. The network being trained is copied,
    never changed.

    Raises:
        ValueError: an unknown ``prompt_source``, or student prompts without a ``student_checkpoint``.
        bundle.checkpoint.CheckpointError: naming the file, when it is missing, unreadable or does not fit.
    """
    import copy

    from bundle.checkpoint import load_weights
    from bundle.diffusion import PromptedSegmenter

    source = settings.get("prompt_source", "label")
    if source not in PROMPT_SOURCES:
        raise ValueError(f"teacher#prompt_source must be one of {PROMPT_SOURCES}, got {source!r}")
    if not settings.get("checkpoint") or source == "label":
        return None
    path = settings.get("student_checkpoint")
    if not path:
        raise ValueError("teacher#prompt_source 'student' needs teacher#student_checkpoint: a SegOne model file "
                         "(e.g. models/model.pt or a previous run's model.pt) whose predictions place SAM2's prompts")
    student = load_weights(copy.deepcopy(diffusion).cpu(), path)
    logger.info("SAM2 teacher prompts come from the student %s", path)
    return StudentMasks(PromptedSegmenter.sharing(student, num_inference_steps=num_inference_steps), roi_size,
                        checkpoint=path)


def unlabelled_datalist(settings: Mapping[str, Any],
                        labelled: Sequence[Mapping[str, str]] = ()) -> List[Dict[str, str]]:
    """``[{"image": path}, ...]`` of ``teacher#unlabelled_dir`` (an MSD folder's ``imagesTs``, or NIfTI files).

    Empty when ``unlabelled_dir`` is not set. Unlabelled cases train only through the teacher, so they need it on
    and its prompts from the student.

    Args:
        settings: train.json's ``teacher`` section.
        labelled: the data set's labelled cases (every split): none of their images may come back as unlabelled,
            or validation and test images would enter training (an MSD folder without ``imagesTs`` falls back to
            ``imagesTr``).

    Raises:
        ValueError: ``unlabelled_dir`` is set but the teacher is off, its prompts come from labels, or the folder
            holds images of the labelled data set.
    """
    from bundle.data import find_images

    folder = settings.get("unlabelled_dir")
    if not folder:
        return []
    if not settings.get("checkpoint"):
        raise ValueError(f"teacher#unlabelled_dir {folder}: unlabelled cases train only through the SAM2 teacher; "
                         "set teacher#checkpoint")
    if settings.get("prompt_source", "label") != "student":
        raise ValueError(f"teacher#unlabelled_dir {folder}: unlabelled cases have no label to place SAM2's prompts; "
                         "set teacher#prompt_source to 'student'")
    items = find_images(folder)
    known = {os.path.realpath(item["image"]) for item in labelled}
    overlap = [item["image"] for item in items if os.path.realpath(item["image"]) in known]
    if overlap:
        raise ValueError(f"teacher#unlabelled_dir {folder}: {len(overlap)} image(s) belong to the labelled data set "
                         f"(e.g. {overlap[0]}); point it at images outside it, such as an MSD folder's imagesTs")
    return items


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
        iou_threshold: slices whose predicted IoU is below it get weight 0.
        prompt_source: ``"label"`` or ``"student"``.
        student: the :class:`StudentMasks` of ``"student"`` mode.
        supervised_key: where 1 (labelled) or 0 (unlabelled) goes.
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
        prompt_source: str = "label",
        student: Optional[StudentMasks] = None,
        supervised_key: str = "supervised",
    ) -> None:
        super().__init__(keys)
        if prompt_source not in PROMPT_SOURCES:
            raise ValueError(f"prompt_source must be one of {PROMPT_SOURCES}, got {prompt_source!r}")
        if teacher is not None and prompt_source == "student" and student is None:
            raise ValueError("prompt_source 'student' needs a student (bundle.teacher.build_student)")
        self.teacher = teacher
        self.cache = TeacherCache(cache_dir)
        self.class_values = [int(v) for v in class_values]
        self.label_key, self.teacher_key, self.weight_key = label_key, teacher_key, weight_key
        self.iou_threshold = float(iou_threshold)
        self.prompt_source, self.student, self.supervised_key = prompt_source, student, supervised_key

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        d = dict(data)
        if self.teacher is None:
            return d
        for key in self.key_iterator(d):
            image = d[key]
            name = source_name(d, key)
            if image.shape[0] != 1 or image.dim() not in (3, 4):
                raise ValueError(f"{name}: the teacher needs a single-channel 2D or 3D image [1, *S], "
                                 f"got {tuple(image.shape)}")
            labelled = self.label_key in d
            if not labelled and self.prompt_source == "label":
                raise ValueError(f"{name}: no label to place SAM2's prompts; unlabelled cases need "
                                 "teacher#prompt_source 'student'")
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


def _like(reference: Any, array: np.ndarray, dtype: torch.dtype = torch.float32) -> Any:
    """``array`` as a tensor with ``reference``'s metadata (affine, applied operations) when it is a MetaTensor."""
    from monai.data import MetaTensor

    tensor = torch.as_tensor(array, dtype=dtype)
    if isinstance(reference, MetaTensor):
        return MetaTensor(tensor, affine=reference.affine.clone(), meta=dict(reference.meta),
                          applied_operations=list(reference.applied_operations))
    return tensor
