"""Losses of mask diffusion: soft Dice, and the consistency term against a teacher's masks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.utils import look_up_option

__all__ = ["soft_dice_loss", "deep_supervision_loss", "CONSISTENCY_LOSSES", "consistency_loss"]


def soft_dice_loss(prob: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Mean over the batch of ``1 - soft Dice``; ``eps`` keeps empty masks (absent prompts) well defined.

    Args:
        prob: predicted probabilities ``[B, *]`` (e.g. ``[B, 1, *S]``); each sample's Dice is over all its other
            dimensions.
        target: binary (or soft) target of the same shape.
        eps: smoothing added to the numerator and the denominator.

    Returns:
        A scalar tensor in ``[0, 1]`` (for probabilities and targets in ``[0, 1]``).
    """
    dims = tuple(range(1, prob.dim()))
    inter = (prob * target).sum(dims)
    denom = prob.sum(dims) + target.sum(dims)
    return (1.0 - (2.0 * inter + eps) / (denom + eps)).mean()


def deep_supervision_loss(logits: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice of coarse heads' logits against the target averaged down to their grids, weighted as
    nnU-Net weights its deep-supervision outputs: 1/2, 1/4, ... from the finest head, normalised to sum to one.

    Averaging (not nearest sampling) keeps a thin structure's partial presence in a coarse voxel as a soft target.

    Args:
        logits: ``[B, C, *S_i]`` per head, finest first, each ``S / S_i`` an integer factor.
        target: ``[B, C, *S]`` in ``[0, 1]``.

    Returns:
        A scalar tensor (0 without heads).
    """
    if not logits:
        return target.sum() * 0.0
    spatial = target.dim() - 2
    pool = F.avg_pool3d if spatial == 3 else F.avg_pool2d
    weights = [0.5 ** (i + 1) for i in range(len(logits))]
    total = target.new_zeros(())
    for w, z in zip(weights, logits):
        factor = [t // s for t, s in zip(target.shape[2:], z.shape[2:])]
        coarse = pool(target.float(), kernel_size=factor, stride=factor)
        term = F.binary_cross_entropy_with_logits(z, coarse) + soft_dice_loss(torch.sigmoid(z), coarse)
        total = total + w * term
    return total / sum(weights)


CONSISTENCY_LOSSES = ("l1", "dice", "bce")


def consistency_loss(
    prob: torch.Tensor, teacher: torch.Tensor, weight: torch.Tensor | None = None, kind: str = "l1", eps: float = 1.0
) -> torch.Tensor:
    """Disagreement between the student's mask probabilities and a teacher's, counted only where ``weight > 0``.

    Args:
        prob: the student's clean-mask probabilities ``[B, 1, *S]``.
        teacher: the teacher's probabilities ``[B, 1, *S]`` (soft targets).
        weight: ``[B, 1, *S]`` trust weights (0: no teacher opinion); all ones when ``None``.
        kind: ``"l1"`` (weighted mean absolute difference, as in the proposal), ``"dice"`` (1 - soft Dice of the
            weighted masks, per sample with a teacher opinion, averaged) or ``"bce"`` (weighted mean binary
            cross-entropy against the teacher's probabilities).
        eps: Dice smoothing.

    Returns:
        A scalar; 0 when no voxel has weight.

    Raises:
        ValueError: when ``kind`` is not one of :data:`CONSISTENCY_LOSSES`.
    """
    kind = look_up_option(kind, CONSISTENCY_LOSSES)
    teacher = teacher.to(prob)
    w = torch.ones_like(prob) if weight is None else weight.to(prob)
    if kind == "l1":
        return (w * (prob - teacher).abs()).sum() / w.sum().clamp_min(1.0)
    if kind == "bce":
        bce = F.binary_cross_entropy(prob.clamp(1e-6, 1 - 1e-6), teacher.clamp(0.0, 1.0), reduction="none")
        return (w * bce).sum() / w.sum().clamp_min(1.0)
    dims = tuple(range(1, prob.dim()))
    inter = (w * prob * teacher).sum(dims)
    denom = (w * prob).sum(dims) + (w * teacher).sum(dims)
    has_opinion = (w.sum(dims) > 0).to(prob)
    dice = 1.0 - (2.0 * inter + eps) / (denom + eps)
    return (dice * has_opinion).sum() / has_opinion.sum().clamp_min(1.0)
