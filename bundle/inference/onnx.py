"""The edge export as an inference network: an ONNX graph run by onnxruntime behind PromptedSegmenter's signature.

:class:`OnnxSegmenter` loads ``model.onnx`` or ``model.int8.onnx`` with the ``model.json`` beside it
(:mod:`bundle.export.edge`) and takes ``forward(image, prompt_embeddings=None)`` like
:class:`~bundle.diffusion.PromptedSegmenter`, so the bundle's sliding-window inferer, :func:`prompted_inference`
and :class:`PromptBatch` use it unchanged (``--onnx_path`` in ``configs/inference.json`` and
``configs/evaluate.json``). Prompt embeddings are matched against the prompt table stored in ``model.json`` and
become the graph's one-hot prompt rows.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from bundle.utils.io import PathLike
from bundle.utils.threads import inference_threads, ort_session_options

__all__ = ["OnnxSegmenter", "edge_prompt_table", "read_edge_manifest"]


def read_edge_manifest(onnx_path: PathLike) -> dict[str, Any]:
    """The ``model.json`` beside an exported edge graph.

    Args:
        onnx_path: the ``.onnx`` file (``model.onnx`` or ``model.int8.onnx``).

    Returns:
        The manifest dict.

    Raises:
        FileNotFoundError: naming the file, when the graph or its ``model.json`` is missing.
        ValueError: naming the file, when ``model.json`` is not an edge manifest.
    """
    from bundle.export.edge import EDGE_FORMAT, MANIFEST_FILE

    path = Path(onnx_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ONNX file not found")
    manifest_path = path.with_name(MANIFEST_FILE)
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path}: not found; an edge export's {MANIFEST_FILE} must be beside {path}")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{manifest_path}: not valid JSON ({e})") from e
    if not isinstance(manifest, Mapping) or manifest.get("format") != EDGE_FORMAT:
        raise ValueError(f"{manifest_path}: not a SegOne edge manifest (format {EDGE_FORMAT!r} expected)")
    for key in ("prompts", "prompt_embeddings", "size_divisor", "spatial_dims"):
        if key not in manifest:
            raise ValueError(f"{manifest_path}: no '{key}' entry")
    return dict(manifest)


def edge_prompt_table(onnx_path: PathLike) -> Any:
    """The prompt table stored with an edge export, for :class:`~bundle.text.PromptSelection` (``--prompts``).

    Args:
        onnx_path: the ``.onnx`` file; its ``model.json`` holds the prompts and their embeddings.

    Returns:
        A :class:`~bundle.text.PromptEmbeddingTable` without a text encoder: only the exported prompts are known.
    """
    from bundle.text import PromptEmbeddingTable

    manifest = read_edge_manifest(onnx_path)
    embeddings = torch.tensor(manifest["prompt_embeddings"], dtype=torch.float32)
    return PromptEmbeddingTable(dict(zip(manifest["prompts"], embeddings)), manifest.get("text_encoder") or {})


class OnnxSegmenter(nn.Module):
    """An exported edge graph behind the inference network's interface: image -> class probabilities.

    Args:
        onnx_path: ``model.onnx`` or ``model.int8.onnx`` of an edge export; ``model.json`` must be beside it.
        intra_op_num_threads: onnxruntime's threads within an operator (default
            :func:`bundle.utils.threads.inference_threads`: the process's cores that are free when the session is
            made; the pool's size is fixed per session).
        allow_spinning: whether onnxruntime's idle threads spin (``session.intra_op.allow_spinning``); spinning
            lowers latency a little on a dedicated machine and collapses it on a busy one (docs/benchmarks.md), so it
            is off by default; the other options are :func:`bundle.utils.threads.ort_session_options`.
        prompt_workers: with 2 or more, the prompts run as separate one-prompt graph calls on that many Python
            threads, each call on one onnxruntime thread (the session is made with ``intra_op_num_threads=1``), and
            their masks are combined as the graph combines them (background ``1 - max``, normalised). The graph's
            many small operators gain little from a second intra-op thread, while independent prompts use one core
            each with no barrier between them (docs/benchmarks.md: 12-18 % faster at 2 idle threads). 1: one call
            for all prompts on ``intra_op_num_threads`` threads. ``None`` (default): the thread count that
            ``intra_op_num_threads`` gives (or :func:`bundle.utils.threads.inference_threads`), so prompts run in
            parallel whenever more than one core is free.

    Attributes:
        manifest: the ``model.json`` content.
        prompt_embeddings: ``[K, E]`` the stored prompt table (the original embeddings, before folding).

    Shapes:
        ``image [B, C, *S] -> [B, 1 + K, *S]``; with ``prompt_embeddings [P, E]`` (rows of the stored table) given
        to ``forward``, ``[B, 1 + P, *S]`` for those prompts. Every spatial size is a multiple of ``size_divisor``.

    Raises:
        FileNotFoundError: naming the file, when the graph or its manifest is missing.
        ValueError: naming the file, when the manifest is not an edge manifest or the graph does not load.
    """

    def __init__(
        self,
        onnx_path: PathLike,
        intra_op_num_threads: int | None = None,
        allow_spinning: bool = False,
        prompt_workers: int | None = None,
    ) -> None:
        super().__init__()
        import onnxruntime as ort

        from bundle.export.edge import INPUT_NAMES

        self.onnx_path = Path(onnx_path)
        self.manifest = read_edge_manifest(self.onnx_path)
        self.register_buffer(
            "prompt_embeddings", torch.tensor(self.manifest["prompt_embeddings"], dtype=torch.float32), persistent=False
        )
        self.size_divisor = int(self.manifest["size_divisor"])
        self.spatial_dims = int(self.manifest["spatial_dims"])
        if prompt_workers is None:
            prompt_workers = inference_threads() if intra_op_num_threads is None else max(1, int(intra_op_num_threads))
        if prompt_workers < 1:
            raise ValueError(f"prompt_workers must be >= 1, got {prompt_workers}")
        self.prompt_workers = int(prompt_workers)
        self._pool: ThreadPoolExecutor | None = None
        if self.prompt_workers > 1:
            intra_op_num_threads = 1  # the parallelism is across prompts
            self._pool = ThreadPoolExecutor(max_workers=self.prompt_workers, thread_name_prefix="segone-prompt")
        options = ort_session_options(
            intra_op_num_threads, **{"session.intra_op.allow_spinning": "1" if allow_spinning else "0"}
        )
        try:
            self.session = ort.InferenceSession(str(self.onnx_path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for bad graphs
            raise ValueError(f"{self.onnx_path}: onnxruntime cannot load it ({type(e).__name__}: {e})") from e
        names = [i.name for i in self.session.get_inputs()]
        if names != list(INPUT_NAMES):
            raise ValueError(f"{self.onnx_path}: graph inputs {names}, expected {list(INPUT_NAMES)}")

    @property
    def prompts(self) -> list[str]:
        """The prompt texts of the one-hot columns (the stored table's rows)."""
        return list(self.manifest["prompts"])

    def prompt_rows(self, prompt_embeddings: torch.Tensor | None) -> np.ndarray:
        """One-hot rows ``[P, K]`` of the graph for prompt embeddings, matched against the stored table.

        Args:
            prompt_embeddings: ``[P, E]`` embeddings, each (to float rounding) a row of the stored table; ``None``
                for every stored prompt.

        Returns:
            float32 ``[P, K]``.

        Raises:
            ValueError: naming the ONNX file, when the embeddings are not ``[P, E]`` or one is not in the table
                (an export serves only the prompts it was made with).
        """
        table = self.prompt_embeddings
        k = table.shape[0]
        if prompt_embeddings is None:
            return np.eye(k, dtype=np.float32)
        emb = torch.as_tensor(prompt_embeddings).detach().float().cpu()
        if emb.dim() != 2 or emb.shape[0] < 1 or emb.shape[1] != table.shape[1]:
            raise ValueError(
                f"{self.onnx_path}: prompt_embeddings must be [P, {table.shape[1]}] with P >= 1, got {tuple(emb.shape)}"
            )
        distance = (emb.unsqueeze(1) - table.unsqueeze(0)).abs().amax(dim=2)  # [P, K]
        tolerance = 1e-5 * max(1.0, float(table.abs().max()))
        best = distance.argmin(dim=1)
        unknown = [i for i in range(emb.shape[0]) if float(distance[i, best[i]]) > tolerance]
        if unknown:
            raise ValueError(
                f"{self.onnx_path}: prompt embedding(s) {unknown} are not in the exported prompt table "
                f"(an edge export serves only its prompts: {self.prompts})"
            )
        return np.eye(k, dtype=np.float32)[best.numpy()]

    def forward(self, image: torch.Tensor, prompt_embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            image: ``[B, C, *S]``, every spatial size a multiple of ``size_divisor``.
            prompt_embeddings: ``[P, E]`` embeddings of prompts of the stored table; every stored prompt when
                ``None``.

        Returns:
            Class probabilities ``[B, 1 + P, *S]`` (``P = K`` without ``prompt_embeddings``), background first, on
            ``image``'s device.

        Raises:
            ValueError: naming the ONNX file, when the image is not ``[B, C, *S]`` with ``spatial_dims`` sizes that
                are multiples of ``size_divisor``, or a prompt is not in the table.
        """
        if image.dim() != self.spatial_dims + 2 or any(s % self.size_divisor for s in image.shape[2:]):
            raise ValueError(
                f"{self.onnx_path}: image must be [B, C, *S] with {self.spatial_dims} spatial sizes, each a multiple "
                f"of {self.size_divisor}; got {tuple(image.shape)}"
            )
        rows = self.prompt_rows(prompt_embeddings)
        data = image.detach().float().cpu().numpy()
        outputs = []
        for b in range(data.shape[0]):  # the graph's batch is one window
            window = np.ascontiguousarray(data[b : b + 1])
            if self._pool is not None and rows.shape[0] > 1:
                outputs.append(self._prompt_parallel(window, rows))
                continue
            (probs,) = self.session.run(None, {"image": window, "prompts": rows})[:1]
            outputs.append(torch.from_numpy(probs))
        return torch.cat(outputs).to(image.device)

    def _prompt_parallel(self, window: np.ndarray, rows: np.ndarray) -> torch.Tensor:
        """One window, each prompt a graph call of its own on the worker threads, combined as the graph does."""
        assert self._pool is not None

        def one(row: np.ndarray) -> np.ndarray:
            # one prompt: the graph's output is [1 - p, p], so channel 1 is that prompt's mask probability
            return self.session.run(None, {"image": window, "prompts": row[None]})[0][:, 1:2]

        classes = torch.from_numpy(np.concatenate(list(self._pool.map(one, rows)), axis=1))
        background = 1.0 - classes.max(dim=1, keepdim=True).values
        probs = torch.cat([background, classes], dim=1)
        return probs / probs.sum(dim=1, keepdim=True).clamp_min(1e-6)
