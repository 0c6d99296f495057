"""Inference: folder inference that goes on past bad files, and the route of prompt embeddings to the network."""

from .engines import (
    FAILED_KEY,
    FolderEvaluator,
    PromptBatch,
    SafeDataset,
    failure_reason,
    prompt_kwargs,
    prompted_inference,
)

__all__ = [
    "FAILED_KEY",
    "failure_reason",
    "FolderEvaluator",
    "PromptBatch",
    "prompt_kwargs",
    "prompted_inference",
    "SafeDataset",
]
