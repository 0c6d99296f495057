"""Inference: folder inference that goes on past bad files, the route of prompt embeddings to the network, the
edge export (ONNX) behind the network's interface, mirroring test-time augmentation, ``torch.compile``, and
sliding windows shaped by each volume's spacing."""

from .compiled import CompiledNetwork, compile_network
from .engines import (
    FAILED_KEY,
    FolderEvaluator,
    PromptBatch,
    SafeDataset,
    failure_reason,
    prompt_kwargs,
    prompted_inference,
)
from .onnx import OnnxSegmenter, edge_prompt_table, read_edge_manifest
from .tta import FlipEnsemble, with_flips
from .windows import SpacingWindowInferer, volume_spacing

__all__ = [
    "CompiledNetwork",
    "compile_network",
    "FAILED_KEY",
    "FlipEnsemble",
    "failure_reason",
    "edge_prompt_table",
    "FolderEvaluator",
    "OnnxSegmenter",
    "PromptBatch",
    "prompt_kwargs",
    "prompted_inference",
    "read_edge_manifest",
    "SafeDataset",
    "SpacingWindowInferer",
    "volume_spacing",
    "with_flips",
]
