"""``torch.compile`` for inference: the segmenter's window calls through inductor, with the same results.

Off by default (``compile: false`` in ``inference.json`` and ``evaluate.json``). SegOne's layers are short,
memory-bound passes (normalisation, activation, shifts, shuffles, kernel-size-1 products); inductor fuses them, and
on this project's 2-core CPU a window call takes about x0.7 of eager mode's time (docs/benchmarks.md). The first call
of each input shape compiles (about half a minute for the shipped network on one core), so it pays for a folder of
volumes, a DICOM batch or a MONAI Label server, not for one small volume.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.data import MetaTensor
from torch import nn

from .onnx import OnnxSegmenter
from .tta import FlipEnsemble

__all__ = ["CompiledNetwork", "compile_network"]


class CompiledNetwork(nn.Module):
    """A network whose calls run through ``torch.compile``; MetaTensor inputs enter as plain tensors.

    MONAI's sliding-window inferer hands the network windows of the loaded image, which are MetaTensors; dynamo traces
    a tensor subclass poorly (pytorch/pytorch#117026, which MONAI's own evaluators work around the same way). The
    inferer puts the image's metadata back on the stitched output, so nothing downstream changes.

    Args:
        network: maps ``[B, C, *S]`` (and keyword arguments, e.g. ``prompt_embeddings``) to ``[B, K, *S]``.
        options: ``torch.compile`` keyword arguments (``mode``, ``dynamic``, ...).
    """

    def __init__(self, network: nn.Module, **options: Any) -> None:
        super().__init__()
        self.network = network
        # the bound method, not the module: the network stays this module's only child (one copy in state_dict)
        self.compiled_forward = torch.compile(network.forward, **options)
        self.train(network.training)

    def forward(self, image: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """
        Args:
            image: ``[B, C, *S]``, a tensor or MetaTensor.
            args: passed to the network.
            kwargs: passed to the network.

        Returns:
            The network's output for ``image`` as a plain tensor.
        """
        if isinstance(image, MetaTensor):
            image = image.as_tensor()
        return self.compiled_forward(image, *args, **kwargs)


def compile_network(network: nn.Module, compile: bool, **options: Any) -> nn.Module:
    """``network`` as it is, or wrapped in :class:`CompiledNetwork` when ``compile`` is set (``inference.json``'s
    ``compile``).

    Args:
        network: the inference network (a :class:`~bundle.diffusion.PromptedSegmenter`, possibly in a
            :class:`~bundle.inference.FlipEnsemble`).
        compile: the switch.
        options: ``torch.compile`` keyword arguments.

    Returns:
        The network, compiled or not.

    Raises:
        ValueError: ``compile`` with an exported model (:class:`~bundle.inference.OnnxSegmenter`), which onnxruntime
            runs: there is no PyTorch graph to compile.
    """
    if not compile:
        return network
    inner = network.network if isinstance(network, FlipEnsemble) else network
    if isinstance(inner, OnnxSegmenter):
        raise ValueError(
            f"compile=True applies to the PyTorch model; {inner.onnx_path} is an exported graph that onnxruntime runs "
            "(leave compile False with onnx_path)"
        )
    return CompiledNetwork(network, **options)
