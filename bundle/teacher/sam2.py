"""A frozen SAM2 image model that segments a structure slice by slice from box and point prompts."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.utils import look_up_option

from bundle.utils.io import PathLike, file_sha256

logger = logging.getLogger(__name__)


__all__ = ["PROMPTS", "BOX_MODES", "SAM2Teacher"]

PROMPTS = ("box", "points", "box+points")


BOX_MODES = ("slice", "volume")


class _QuietSAM2Progress(logging.Filter):
    """Drops SAM2's per-image progress lines, which it logs at INFO on the root logger (three per slice, so tens of
    thousands while a data set's teacher volumes are computed); everything else passes."""

    MESSAGES = (
        "For numpy array image, we assume (HxWxC) format",
        "Computing image embeddings for the provided image",
        "Image embeddings computed.",
    )

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

    Raises:
        FileNotFoundError: when ``checkpoint`` is not a file.
        ValueError: when ``image_size`` is not a multiple of 16, ``axis`` is not 0, 1 or 2, ``prompt`` or
            ``box_mode`` is not a known option, or point prompts are asked for with ``num_points < 1``.
        RuntimeError: when the checkpoint does not fit the config.
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
        device: str | torch.device = "cpu",
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
        prompt, box_mode = look_up_option(prompt, PROMPTS), look_up_option(box_mode, BOX_MODES)
        if "points" in prompt and num_points < 1:
            raise ValueError(f"point prompts need num_points >= 1, got {num_points}")
        try:
            model = build_sam2(
                config,
                str(self.checkpoint),
                device=str(device),
                hydra_overrides_extra=[f"++model.image_size={int(image_size)}"],
            )
        except RuntimeError as e:  # SAM2 logs the mismatching keys and raises a bare RuntimeError
            raise RuntimeError(
                f"{self.checkpoint} does not fit SAM2 config {config} ({e or 'state dict mismatch'})"
            ) from e
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
        self._checkpoint_hash: str | None = None
        logger.info(
            "SAM2 teacher: %s (%s, image size %d, %s prompts, %s boxes)",
            self.checkpoint,
            config,
            self.image_size,
            prompt,
            box_mode,
        )

    @property
    def checkpoint_hash(self) -> str:
        """The SHA-256 of the checkpoint file (64 hex digits), computed at first use."""
        if self._checkpoint_hash is None:
            self._checkpoint_hash = file_sha256(self.checkpoint)
        return self._checkpoint_hash

    @property
    def settings(self) -> dict[str, Any]:
        """Everything that changes the teacher's output (the cache key's teacher part)."""
        return {
            "checkpoint_sha256": self.checkpoint_hash,
            "config": self.config,
            "image_size": self.image_size,
            "axis": self.axis,
            "box_margin": self.box_margin,
            "prompt": self.prompt,
            "box_mode": self.box_mode,
            "num_points": self.num_points if "points" in self.prompt else 0,
            "seed": self.seed if "points" in self.prompt else 0,
        }

    @staticmethod
    def _to_rgb(slice_2d: np.ndarray) -> np.ndarray:
        """A slice as the uint8 RGB image SAM2 expects, intensities scaled by the 0.5-99.5 percentiles."""
        lo, hi = np.percentile(slice_2d, [0.5, 99.5]) if slice_2d.size else (0.0, 1.0)
        scaled = np.clip((slice_2d - lo) / max(hi - lo, 1e-6), 0, 1) * 255
        return np.repeat(scaled.astype(np.uint8)[..., None], 3, axis=-1)

    def _box(self, rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """SAM2's ``[x0, y0, x1, y1]`` box (x: columns) around pixels, widened by ``box_margin``, inside the image."""
        m = self.box_margin
        return np.array(
            [
                max(cols.min() - m, 0),
                max(rows.min() - m, 0),
                min(cols.max() + m, shape[1] - 1),
                min(rows.max() + m, shape[0] - 1),
            ],
            np.float32,
        )

    def _points(self, rows: np.ndarray, cols: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``num_points`` positive points drawn without replacement from the slice's mask pixels, as ``(x, y)``."""
        rng = np.random.default_rng([self.seed, index])
        pick = rng.choice(rows.size, size=min(self.num_points, rows.size), replace=False)
        return np.stack([cols[pick], rows[pick]], axis=1).astype(np.float32), np.ones(pick.size, np.int32)

    def volume(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Teacher mask probabilities for ``mask``'s structure, slice by slice.

        Args:
            image: ``[X, Y, Z]`` intensities, or a 2D ``[X, Y]`` image (one slice).
            mask: boolean mask of the structure, the shape of ``image`` (ground truth, or the student's own
                prediction); it places the prompts (see ``prompt`` and ``box_mode``).

        Returns:
            ``(probabilities, predicted IoU per slice)``: probabilities in [0, 1] (float32, the shape of
            ``image``); IoU ``[n_slices]`` float32 (``[1]`` for a 2D image). Slices without a prompt get
            probability 0 and IoU NaN (no teacher opinion).

        Raises:
            ValueError: when ``image`` is not 2D or 3D, ``mask`` has another shape, or ``image`` is not finite.
        """
        return self.volumes(image, {0: mask})[0]

    @torch.inference_mode()
    def volumes(self, image: np.ndarray, masks: Mapping[int, np.ndarray]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """:meth:`volume` for several structures of one image at once: ``{class: (probabilities, IoU)}``.

        SAM2's image encoder, most of its cost, runs once per slice for all the structures prompted there.

        Args:
            image: ``[X, Y, Z]`` intensities, or a 2D ``[X, Y]`` image (one slice).
            masks: ``{class: boolean mask}``, each the shape of ``image``.

        Returns:
            ``{class: (probabilities, IoU per slice)}`` for every class of ``masks``, each as :meth:`volume`'s.

        Raises:
            ValueError: when ``image`` is not 2D or 3D, a mask has another shape, or ``image`` is not finite.
        """
        image = np.asarray(image, np.float32)
        masks = {c: np.asarray(m).astype(bool) for c, m in masks.items()}
        if image.ndim not in (2, 3) or any(m.shape != image.shape for m in masks.values()):
            shapes = ", ".join(str(m.shape) for m in masks.values())
            raise ValueError(
                f"image and mask must be the same [X, Y, Z] or [X, Y] shape, got {image.shape} and {shapes}"
            )
        if not np.isfinite(image).all():
            raise ValueError("image contains NaN or Inf")
        if image.ndim == 2:  # a 2D image is one slice, whatever the axis
            out = self._slices(image[None], {c: m[None] for c, m in masks.items()})
            return {c: (p[0], iou) for c, (p, iou) in out.items()}
        out = self._slices(
            np.moveaxis(image, self.axis, 0), {c: np.moveaxis(m, self.axis, 0) for c, m in masks.items()}
        )
        return {c: (np.moveaxis(p, 0, self.axis), iou) for c, (p, iou) in out.items()}

    def _prompts(self, msk: np.ndarray) -> dict[int, dict[str, Any]]:
        """``{slice: SAM2 prompt kwargs}`` of one structure's ``[n_slices, A, B]`` mask (slice axis first)."""
        prompted = msk.any(axis=(1, 2))
        volume_box = None
        if self.box_mode == "volume" and prompted.any():
            ks = np.nonzero(prompted)[0]
            prompted[ks.min() : ks.max() + 1] = True  # every slice of the 3D box's extent, gaps included
            rows, cols = np.nonzero(msk.any(axis=0))
            volume_box = self._box(rows, cols, msk.shape[1:])
        prompts: dict[int, dict[str, Any]] = {}
        for k in np.nonzero(prompted)[0]:
            rows, cols = np.nonzero(msk[k])  # slice axes (a, b) -> SAM2 image rows a, columns b
            kwargs: dict[str, Any] = {}
            if "box" in self.prompt:
                kwargs["box"] = volume_box if volume_box is not None else self._box(rows, cols, msk.shape[1:])
            if "points" in self.prompt and rows.size:
                kwargs["point_coords"], kwargs["point_labels"] = self._points(rows, cols, int(k))
            if kwargs:  # point prompts on a gap slice of a 3D box: nothing to place
                prompts[int(k)] = kwargs
        return prompts

    def _slices(self, img: np.ndarray, msks: Mapping[int, np.ndarray]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
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
