"""Measuring which input voxels an output voxel depends on (its gradient support)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

__all__ = ["input_support", "activate_zero_init"]


def activate_zero_init(net: nn.Module, std: float = 0.1, seed: int = 1) -> nn.Module:
    """Give zero-initialised weights (FiLM, GlobalContext output) random values, as after some training.

    A zero weight blocks the gradient through its branch, so a fresh network would hide what the branch can reach.

    Args:
        net: the network; every non-empty ``weight`` tensor of its modules that is all zero is overwritten in place.
        std: standard deviation of the normal values drawn.
        seed: seed of the generator the values are drawn from.

    Returns:
        ``net`` itself, modified in place.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            w = getattr(m, "weight", None)
            if isinstance(w, torch.Tensor) and w.numel() and not w.any():
                w.copy_(torch.randn(w.shape, generator=gen) * std)
    return net


def input_support(net: nn.Module, shape: Sequence[int], point: Sequence[int], channel: int = 0) -> torch.Tensor:
    """Boolean map ``shape`` of the input voxels on which output ``[0, channel, *point]`` depends.

    The network runs in eval mode on a random input with one channel; an input voxel belongs to the support when
    the gradient of the output voxel with respect to it is non-zero. Use a normalisation that does not pool over
    positions (eval-mode BatchNorm): InstanceNorm's statistics make every voxel depend on every other one.

    Args:
        net: network taking ``[1, 1, *shape]``.
        shape: spatial input shape.
        point: spatial index of the output voxel.
        channel: output channel.

    Returns:
        Bool tensor of shape ``shape``.
    """
    net.eval()
    x = torch.rand(1, 1, *shape, requires_grad=True)
    net(x)[(0, channel) + tuple(point)].backward()
    assert x.grad is not None
    return x.grad[0, 0] != 0
