"""Test-time augmentation by mirroring (nnU-Net's): the class probabilities averaged over flipped copies of the input.

Off by default (``tta_flips: []`` in ``inference.json``): each flip costs one more pass, and the shipped model's
measurement of what they buy is in the model card.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["FlipEnsemble", "with_flips"]


class FlipEnsemble(nn.Module):
    """Averages a network's output over mirrored inputs, each output flipped back.

    Args:
        network: maps ``[B, C, *S]`` (and keyword arguments, e.g. ``prompt_embeddings``) to ``[B, K, *S]``
            probabilities on the same grid.
        flips: the mirrorings, each a sequence of spatial axes (0 is the first spatial axis); ``[]`` is the input as
            it is. E.g. ``[[], [0]]``: the input and its left-right mirror.

    Raises:
        ValueError: no flip, or an axis outside the spatial axes (checked at the first call).
    """

    def __init__(self, network: nn.Module, flips: Sequence[Sequence[int]]) -> None:
        super().__init__()
        if not flips:
            raise ValueError("FlipEnsemble needs at least one flip ([] is the input as it is)")
        self.network = network
        self.flips = [tuple(int(a) for a in f) for f in flips]

    def forward(self, image: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """
        Args:
            image: ``[B, C, *S]``.
            kwargs: passed to the network.

        Returns:
            ``[B, K, *S]``: the mean of the network's outputs over the flips.
        """
        spatial = image.dim() - 2
        total = None
        for flip in self.flips:
            if any(not 0 <= a < spatial for a in flip):
                raise ValueError(f"flip axes {flip} outside the {spatial} spatial axes")
            dims = [a + 2 for a in flip]
            out = self.network(image.flip(dims) if dims else image, **kwargs)
            out = out.flip(dims) if dims else out
            total = out if total is None else total + out
        assert total is not None
        return total / len(self.flips)


def with_flips(network: nn.Module, flips: Sequence[Sequence[int]] | None) -> nn.Module:
    """``network`` itself without flips, else a :class:`FlipEnsemble` of it.

    Args:
        network: the inference network.
        flips: ``tta_flips`` of the config (``[]``/``None``: no test-time augmentation).

    Returns:
        The network to run.
    """
    return FlipEnsemble(network, flips) if flips else network
