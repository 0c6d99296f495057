"""Export of SegOne networks to TorchScript and ONNX, written atomically and checked against PyTorch."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from bundle.networks import blocks  # noqa: F401  (registers segone::space_to_depth)
from bundle.utils.io import PathLike, atomic_path

__all__ = ["ONNX_TRANSLATIONS", "export_torchscript", "export_onnx", "compare_onnx"]


def _space_to_depth_onnx(x, block: int):
    """``segone::space_to_depth`` as ONNX: ``[N, H*r, W*r] -> SpaceToDepth([N, 1, H*r, W*r])``."""
    from onnxscript import opset18 as op

    return op.SpaceToDepth(op.Unsqueeze(x, op.Constant(value_ints=[1])), blocksize=block)


# the bundle's custom operators and the ONNX they export as (``torch.onnx.export(custom_translation_table=...)``)
ONNX_TRANSLATIONS = {torch.ops.segone.space_to_depth.default: _space_to_depth_onnx}


def export_torchscript(net: torch.nn.Module, filepath: PathLike, trace_inputs: tuple | None = None) -> Path:
    """Compile ``net`` with ``torch.jit.script`` (or trace it with ``trace_inputs``) and save it atomically.

    Args:
        net: the network, put in eval mode.
        filepath: destination ``.ts``/``.pt`` file; written to a temporary file first, then renamed.
        trace_inputs: example inputs to trace instead of scripting.

    Returns:
        The path written.
    """
    net = net.eval()
    with torch.no_grad():  # records the networks' inference paths (convolutions, not training-time matmuls)
        module = torch.jit.trace(net, trace_inputs) if trace_inputs is not None else torch.jit.script(net)
    with atomic_path(filepath) as tmp:
        torch.jit.save(module, str(tmp))
    return Path(filepath)


def export_onnx(
    net: torch.nn.Module,
    filepath: PathLike,
    example_inputs: tuple[torch.Tensor, ...],
    input_names: Sequence[str] = ("image",),
    output_names: Sequence[str] = ("logits",),
    dynamic_spatial: bool = True,
    size_divisor: int | None = None,
    max_size: int = 1024,
) -> Path:
    """Export ``net`` to ONNX with the ``torch.export``-based exporter.

    With ``dynamic_spatial`` the spatial sizes of the first input are symbolic multiples of ``size_divisor`` (by
    default ``net.size_divisor``), so one file serves any patch size the network accepts. The batch size is the
    example's. The legacy TorchScript-based
    exporter is not used: with dynamic axes it records some of SegOne's shape arithmetic as constants and then gives
    wrong results at other sizes.

    Args:
        net: the network, put in eval mode.
        filepath: destination ``.onnx`` file; written to a temporary file first, then renamed.
        example_inputs: inputs of ``net.forward``, image first.
        input_names: ONNX names of the inputs, in order.
        output_names: ONNX names of the outputs.
        dynamic_spatial: make the image's spatial sizes dynamic.
        size_divisor: multiple that every spatial size must have.
        max_size: largest spatial size the exported graph accepts.

    Returns:
        The path written.
    """
    net = net.eval()
    dynamic_shapes = None
    if dynamic_spatial:
        divisor = int(size_divisor or getattr(net, "size_divisor", 1))
        image = example_inputs[0]
        dims: dict[int, object] = {
            2 + i: torch.export.Dim(f"s{i}", min=1, max=max(1, max_size // divisor)) * divisor
            for i in range(image.dim() - 2)
        }
        dynamic_shapes = tuple([dims] + [None] * (len(example_inputs) - 1))
    with atomic_path(filepath, suffix=".onnx") as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            net,
            example_inputs,
            dynamo=True,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_shapes=dynamic_shapes,
            custom_translation_table=ONNX_TRANSLATIONS,
            verbose=False,
        )
        program.save(str(tmp))
    return Path(filepath)


def compare_onnx(net: torch.nn.Module, filepath: PathLike, inputs: tuple[torch.Tensor, ...]) -> float:
    """Run the ONNX file with onnxruntime (CPU) and return the largest absolute difference from ``net(*inputs)``.

    Args:
        net: the PyTorch network, put in eval mode.
        filepath: the ``.onnx`` file.
        inputs: the inputs, one per graph input in the graph's order, e.g. ``(image [B, C, *S],)``.

    Returns:
        ``max |onnx - pytorch|`` over the first output.

    Raises:
        ValueError: when the graph takes another number of inputs, or its first output's shape is not PyTorch's.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(filepath), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    if len(names) != len(inputs):
        raise ValueError(f"{filepath}: the ONNX graph takes {len(names)} inputs ({names}), got {len(inputs)}.")
    feeds = {name: t.detach().cpu().numpy() for name, t in zip(names, inputs)}
    (out,) = session.run(None, feeds)[:1]
    with torch.no_grad():
        ref = net.eval()(*inputs).cpu().numpy()
    if out.shape != ref.shape:
        raise ValueError(f"{filepath}: ONNX output shape {out.shape} differs from PyTorch's {ref.shape}.")
    return float(np.abs(out - ref).max())
