"""Export of SegOne networks: TorchScript and ONNX, written atomically and checked against PyTorch; the edge export
(folded prompt conditioning, fp32 and int8 ONNX, ``model.json``) in :mod:`bundle.export.edge`."""

from .edge import export_edge, fold_prompts
from .exporters import compare_onnx, export_onnx, export_torchscript

__all__ = ["compare_onnx", "export_edge", "export_onnx", "export_torchscript", "fold_prompts"]
