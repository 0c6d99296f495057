"""Distributed-training facts: which process writes files, and the module inside a DDP wrapper."""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["is_main_process", "unwrap_module"]


def is_main_process() -> bool:
    """Whether this process writes files: always outside a distributed run, rank 0 inside one.

    Returns:
        ``True`` for the process that writes.
    """
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def unwrap_module(network: torch.nn.Module) -> torch.nn.Module:
    """The module inside a :class:`~torch.nn.parallel.DistributedDataParallel` wrapper, or ``network`` itself.

    Args:
        network: a module, wrapped or not.

    Returns:
        The unwrapped module (whose state dict has no ``module.`` prefix).
    """
    return network.module if isinstance(network, torch.nn.parallel.DistributedDataParallel) else network
