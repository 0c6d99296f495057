"""Seeded Gaussian noise that is a pure function of the voxel index: the same in eager PyTorch, traces and ONNX."""

from __future__ import annotations

import math

import torch

__all__ = ["seeded_normal"]

_M31 = 2147483647  # 2^31 - 1: products of two residues stay below 2^62, exact in int64 everywhere


_UNIFORM_BITS = 24  # a float32 holds these exactly: (q + 0.5) / 2^24 is the same number in every runtime


def _seeded_uniform(index: torch.Tensor, seed: int, stream: int) -> torch.Tensor:
    """Uniform (0, 1) float32 values from a counter-based integer hash of ``index`` (int64), ``seed`` and ``stream``:
    the hash's top 24 bits, centred in their bin, so the value is exact in float32 and never 0 or 1."""
    x = (index * 48271 + (seed * 2 + stream) * 2654435 + 12345) % _M31
    x = (x * x + 1013904223) % _M31
    x = (x * 16807 + 7) % _M31
    x = (x * x + 744152805) % _M31
    q = torch.div(x, 1 << (31 - _UNIFORM_BITS), rounding_mode="trunc")  # x >= 0: one integer Div
    return (q.float() + 0.5) * (1.0 / (1 << _UNIFORM_BITS))


def seeded_normal(reference: torch.Tensor, seed: int) -> torch.Tensor:
    """Standard normal noise shaped like ``reference``, a pure function of the voxel index and ``seed``.

    ``torch.randn`` with a generator is deterministic in eager mode only: a TorchScript trace or an ONNX graph
    re-draws it. This noise is built from exact int64 arithmetic (Box-Muller on a counter-based hash), so eager
    PyTorch, a trace and onnxruntime produce the same values (to float rounding) and the exported sampler stays
    deterministic. Both Box-Muller outputs are used (voxels ``2i`` and ``2i + 1`` from one pair of uniforms), so
    the hash runs once per voxel: it is a fixed cost of every sampler call in exported graphs.

    Args:
        reference: tensor whose shape, dtype and device the noise takes (its values are not used).
        seed: the noise's seed; different seeds give independent-looking noise.

    Returns:
        Tensor shaped like ``reference``, of its dtype and on its device.
    """
    numel = reference.numel()
    pairs = torch.arange((numel + 1) // 2, dtype=torch.int64, device=reference.device)
    u1, u2 = _seeded_uniform(pairs, seed, 0), _seeded_uniform(pairs, seed, 1)
    radius, angle = torch.sqrt(-2.0 * torch.log(u1)), (2.0 * math.pi) * u2
    z = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1).reshape(-1)[:numel]
    return z.to(reference.dtype).reshape(reference.shape)
