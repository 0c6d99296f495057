"""Seeded Gaussian noise that is a pure function of the voxel index: the same in eager PyTorch, traces and ONNX."""

from __future__ import annotations

import math

import torch

__all__ = ["seeded_normal"]

_M31 = 2147483647  # 2^31 - 1: products of two residues stay below 2^62, exact in int64 everywhere


def _seeded_uniform(index: torch.Tensor, seed: int, stream: int) -> torch.Tensor:
    """Uniform (0, 1) values from a counter-based integer hash of ``index`` (int64), ``seed`` and ``stream``."""
    x = (index * 48271 + (seed * 2 + stream) * 2654435 + 12345) % _M31
    x = (x * x + 1013904223) % _M31
    x = (x * 16807 + 7) % _M31
    x = (x * x + 744152805) % _M31
    return (x.double() + 0.5) / _M31


def seeded_normal(reference: torch.Tensor, seed: int) -> torch.Tensor:
    """Standard normal noise shaped like ``reference``, a pure function of the voxel index and ``seed``.

    ``torch.randn`` with a generator is deterministic in eager mode only: a TorchScript trace or an ONNX graph
    re-draws it. This noise is built from exact int64 arithmetic (Box-Muller on a counter-based hash), so eager
    PyTorch, a trace and onnxruntime produce the same values (to float rounding) and the exported sampler stays
    deterministic.

    Args:
        reference: tensor whose shape, dtype and device the noise takes (its values are not used).
        seed: the noise's seed; different seeds give independent-looking noise.

    Returns:
        Tensor shaped like ``reference``, of its dtype and on its device.
    """
    index = torch.arange(reference.numel(), dtype=torch.int64, device=reference.device)
    u1, u2 = _seeded_uniform(index, seed, 0), _seeded_uniform(index, seed, 1)
    z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)
    return z.to(reference.dtype).reshape(reference.shape)
