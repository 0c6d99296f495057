"""A trained SegOne's own masks as SAM2 prompts, so unlabelled cases train through the teacher."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from bundle.utils.io import PathLike

logger = logging.getLogger(__name__)

__all__ = ["PROMPT_SOURCES", "StudentMasks", "unlabelled_datalist"]

PROMPT_SOURCES = ("label", "student")


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
        coordinate_channels: the student was trained with ``coordinate_channels``: each image it is given gets its
            voxels' positions appended (:class:`~bundle.transforms.AddCoordinatesd`), as inference does before its
            windows.
    """

    def __init__(
        self,
        segmenter: torch.nn.Module,
        roi_size: Sequence[int],
        overlap: float = 0.25,
        checkpoint: PathLike | None = None,
        coordinate_channels: bool = False,
    ) -> None:
        self.segmenter = segmenter.eval()
        self.roi_size = tuple(int(r) for r in roi_size)
        self.overlap = overlap
        self.checkpoint = checkpoint
        self.coordinate_channels = bool(coordinate_channels)

    @classmethod
    def from_inference_config(cls, checkpoint: PathLike, bundle_root: PathLike, **overrides: Any) -> StudentMasks:
        """A student from a SegOne model file with ``configs/inference.json``'s network and window (e.g. the
        released ``models/model.pt``), outside a training run.

        Args:
            checkpoint: the SegOne model file.
            bundle_root: the bundle root whose ``configs/inference.json`` (with ``metadata.json``) is read.
            overrides: config ids and values applied to ``inference.json`` (e.g. ``num_inference_steps=2``).

        Returns:
            The student, with ``inference.json``'s ``roi_size`` and ``overlap``.

        Raises:
            bundle.utils.checkpoint.CheckpointError: naming the file, when it is missing or does not fit the network.
        """
        from bundle.utils.checkpoint import load_weights
        from bundle.utils.config import load_bundle_config

        parser = load_bundle_config("inference.json", bundle_root=bundle_root, overrides=overrides)
        segmenter = load_weights(parser.get_parsed_content("network_def"), checkpoint)
        coords = bool(parser.get_parsed_content("coordinate_channels"))
        return cls(
            segmenter, parser["roi_size"], overlap=parser["overlap"], checkpoint=checkpoint, coordinate_channels=coords
        )

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: PathLike | None,
        diffusion: torch.nn.Module,
        roi_size: Sequence[int],
        num_inference_steps: int = 1,
        overlap: float = 0.25,
        coordinate_channels: bool = False,
    ) -> StudentMasks:
        """The student of ``prompt_source="student"``: ``diffusion``'s architecture with a fixed checkpoint's weights.

        The network being trained is copied, never changed.

        Args:
            checkpoint: a SegOne model file (``models/model.pt`` or a previous run's) whose predictions place SAM2's
                prompts (train.json's ``teacher_training#student_checkpoint``).
            diffusion: the training network (:class:`~bundle.diffusion.MaskDiffusion`), copied.
            roi_size: the sliding-window size.
            num_inference_steps: DDIM steps of the student's sampler.
            overlap: the sliding-window overlap.
            coordinate_channels: ``diffusion`` takes the voxels' positions as channels (train.json's switch).

        Returns:
            The student.

        Raises:
            ValueError: no checkpoint is given.
            bundle.utils.checkpoint.CheckpointError: naming the file, when it is missing, unreadable or does not fit.
        """
        import copy

        from bundle.diffusion import PromptedSegmenter
        from bundle.utils.checkpoint import load_weights

        if not checkpoint:
            raise ValueError(
                "teacher_training#prompt_source 'student' needs teacher_training#student_checkpoint: a SegOne model "
                "file (e.g. models/model.pt or a previous run's model.pt) whose predictions place SAM2's prompts"
            )
        student = load_weights(copy.deepcopy(diffusion).cpu(), checkpoint)
        logger.info("SAM2 teacher prompts come from the student %s", checkpoint)
        segmenter = PromptedSegmenter.sharing(student, num_inference_steps=num_inference_steps)
        return cls(segmenter, roi_size, overlap=overlap, checkpoint=checkpoint, coordinate_channels=coordinate_channels)

    @torch.no_grad()
    def __call__(self, image: torch.Tensor) -> np.ndarray:
        """The student's label map ``[*S]`` (int64: 0 background, ``k`` the ``k``-th class prompt) of ``[C, *S]``.

        Args:
            image: one image ``[C, *S]`` (no batch dimension), tensor or array.

        Returns:
            The label map ``[*S]``, int64, on the CPU.

        Raises:
            ValueError: when ``roi_size`` does not have one size per spatial dimension of ``image``, or the student's
                network takes another number of image channels.
        """
        from monai.inferers import sliding_window_inference

        from bundle.transforms import AddCoordinatesd

        x = torch.as_tensor(image).float()
        if len(self.roi_size) != x.dim() - 1:
            raise ValueError(f"student roi_size {self.roi_size} does not fit an image of shape {tuple(image.shape)}")
        if self.coordinate_channels:
            # the positions of the whole volume the teacher is given, as inference computes them before its windows
            x = AddCoordinatesd("image")({"image": x})["image"]
        denoiser = getattr(self.segmenter, "denoiser", None)
        expected = getattr(denoiser, "in_channels", None)
        if expected is not None and int(expected) - 1 != x.shape[0]:  # the denoiser also takes the noisy mask
            raise ValueError(
                f"the student {self.checkpoint} takes {int(expected) - 1} image channel(s), the image has "
                f"{x.shape[0]} (coordinate_channels {self.coordinate_channels})"
            )
        x = x[None]
        probs = sliding_window_inference(x, self.roi_size, 1, self.segmenter, overlap=self.overlap, mode="gaussian")
        return torch.as_tensor(probs)[0].argmax(0).cpu().numpy()


def unlabelled_datalist(
    unlabelled_dir: PathLike | None,
    dataset_dir: PathLike | None,
    demo_dir: PathLike | None = None,
    teacher: Any = None,
    prompt_source: str = "label",
) -> list[dict[str, str]]:
    """``[{"image": path}, ...]`` of ``teacher_training#unlabelled_dir`` (an MSD folder's ``imagesTs``, or NIfTI files).

    Unlabelled cases train only through the teacher, so they need it on and its prompts from the student.

    Args:
        unlabelled_dir: the folder of unlabelled images; ``None`` or empty: no unlabelled cases.
        dataset_dir: the labelled data set (``dataset_split``'s, empty for the demo data): none of its images, in
            any split, may come back as unlabelled, or validation and test images would enter training (an MSD
            folder without ``imagesTs`` falls back to ``imagesTr``).
        demo_dir: the demo data set used when ``dataset_dir`` is empty.
        teacher: the SAM2 teacher (``None`` when it is off).
        prompt_source: ``"label"`` or ``"student"``.

    Returns:
        The unlabelled cases, empty when ``unlabelled_dir`` is not set.

    Raises:
        ValueError: ``unlabelled_dir`` is set but the teacher is off, its prompts come from labels, or the folder
            holds images of the labelled data set.
    """
    from bundle.data import dataset_split, find_images

    folder = unlabelled_dir
    if not folder:
        return []
    if teacher is None:
        raise ValueError(
            f"teacher_training#unlabelled_dir {folder}: unlabelled cases train only through the SAM2 teacher; "
            "set teacher#checkpoint"
        )
    if prompt_source != "student":
        raise ValueError(
            f"teacher_training#unlabelled_dir {folder}: unlabelled cases have no label to place SAM2's prompts; "
            "set teacher_training#prompt_source to 'student'"
        )
    items = find_images(folder)
    labelled = dataset_split(dataset_dir, "all", demo_dir)
    known = {os.path.realpath(item["image"]) for item in labelled}
    overlap = [item["image"] for item in items if os.path.realpath(item["image"]) in known]
    if overlap:
        raise ValueError(
            f"teacher_training#unlabelled_dir {folder}: {len(overlap)} image(s) belong to the labelled data set "
            f"(e.g. {overlap[0]}); point it at images outside it, such as an MSD folder's imagesTs"
        )
    return items
