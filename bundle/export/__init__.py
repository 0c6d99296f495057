"""Export of SegOne networks to TorchScript and ONNX, written atomically and checked against PyTorch."""

from .exporters import compare_onnx, export_onnx, export_torchscript

__all__ = ["compare_onnx", "export_onnx", "export_torchscript"]
