"""Edge export: the prompted sampler with its conditioning folded into tables, as fp32 and int8 ONNX plus a manifest.

The inference network conditions its denoiser on a diffusion timestep and a text embedding. At inference both come
from small fixed sets: the ``S`` DDIM timesteps (:meth:`~bundle.diffusion.MaskDiffusion.sampling_timesteps`) and
the ``K`` class prompts (the ``prompt_embeddings`` buffer). :func:`fold_prompts` precomputes every FiLM's
``(gamma, beta)`` for each of the ``S * K`` pairs, so the exported graph holds a lookup table instead of the text
projection, the timestep MLP and the FiLM projections (about 190 k parameters for the bundle's networks), and the
prompts become one-hot rows. :func:`export_edge` writes the folded network as ``model.onnx`` (fp32),
``model.int8.onnx`` (onnxruntime static quantisation, calibrated on preprocessed training windows),
``model.int8-weights.onnx`` (weight-only int8, :func:`quantize_weights`) and ``model.json`` (everything a runtime
needs: preprocessing, sliding windows, classes, prompts, file hashes); see ``docs/edge.md``.
"""

from __future__ import annotations

import copy
import json
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from bundle.diffusion.segmenter import PromptedSegmenter
from bundle.export.exporters import ONNX_TRANSLATIONS, compare_onnx
from bundle.networks.blocks import ConditionedPointwise, FiLM
from bundle.utils.io import PathLike, atomic_path, file_sha256, write_text_atomic

__all__ = [
    "EDGE_FORMAT",
    "EDGE_FORMAT_VERSION",
    "FP32_FILE",
    "INPUT_NAMES",
    "INT8_FILE",
    "INT8_WEIGHTS_FILE",
    "MANIFEST_FILE",
    "OUTPUT_NAMES",
    "QUANTIZATION",
    "FoldedCondition",
    "calibration_windows",
    "edge_manifest",
    "export_edge",
    "export_folded_onnx",
    "fold_prompts",
    "quantize_edge",
    "quantize_weights",
]


class FoldedCondition(nn.Module):
    """Stands where :class:`~bundle.networks.blocks.ConditionEmbedding` was: a one-hot over (step, prompt) pairs.

    The timestep is matched by equality against the fixed grid of DDIM timesteps, and the outer product of that
    one-hot with the prompt one-hot selects one of the ``S * K`` pairs (step-major: pair ``s * K + k``). The FiLM
    projections of a folded network are bias-free linear maps of this vector whose weight columns are the
    precomputed ``(gamma, beta)`` of each pair, so a one-hot row selects its pair's values exactly. A timestep
    outside the grid gives a zero vector (FiLM then is the identity): a folded network is only valid for the
    sampling steps it was folded for.

    Args:
        timesteps: the ``S`` DDIM timesteps the table was computed for.
        num_prompts: ``K``, the number of class prompts.

    Shapes:
        ``timesteps [B]`` (any shape with ``B`` elements), ``context [B, K]`` (one-hot rows) ``-> [B, S * K]``.
    """

    def __init__(self, timesteps: list[int] | torch.Tensor, num_prompts: int) -> None:
        super().__init__()
        self.register_buffer("timesteps", torch.as_tensor(timesteps, dtype=torch.long).reshape(-1))
        self.num_prompts = int(num_prompts)

    def forward(self, timesteps: torch.Tensor | None, context: torch.Tensor | None) -> torch.Tensor:
        """
        Args:
            timesteps: diffusion timesteps ``[B]``, each one of the folded grid.
            context: prompt one-hot rows ``[B, K]`` (or ``[B, 1, K]``).

        Returns:
            ``[B, S * K]``: the one-hot of each item's (step, prompt) pair.

        Raises:
            ValueError: when ``timesteps`` or ``context`` is None.
        """
        if timesteps is None or context is None:
            raise ValueError("a folded network needs both `timesteps` [B] and one-hot `context` [B, K].")
        if context.dim() == 3:
            context = context.squeeze(1)
        step = (timesteps.reshape(-1, 1) == self.timesteps.reshape(1, -1)).to(context.dtype)  # [B, S]
        return (step.unsqueeze(2) * context.unsqueeze(1)).flatten(1)  # [B, S * K]


def _conditioned_projections(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules whose ``proj`` maps the conditioning vector: FiLMs and prompt-controlled layers."""
    return [(name, m) for name, m in module.named_modules() if isinstance(m, (FiLM, ConditionedPointwise))]


@torch.no_grad()
def fold_prompts(segmenter: PromptedSegmenter) -> PromptedSegmenter:
    """A copy of ``segmenter`` whose text and timestep conditioning is precomputed for its prompts and DDIM steps.

    For the ``K`` class prompts (``segmenter.prompt_embeddings``, ``[K, E]``) and the ``S`` DDIM timesteps
    (``segmenter.sampling_timesteps(segmenter.num_inference_steps)``) every FiLM's ``(gamma, beta)`` (and every
    prompt-controlled layer's weight change, :class:`~bundle.networks.blocks.ConditionedPointwise`) is computed for
    each (timestep, prompt) pair. In the copy, ``denoiser.cond_embed`` is a :class:`FoldedCondition` and each
    FiLM's ``proj`` a bias-free ``Linear(S * K, 2 * C)`` holding that table (``FiLM.forward`` is unchanged); the
    ``prompt_embeddings`` buffer becomes ``eye(K)``, so ``forward(image)`` still gives every class and
    ``forward(image, rows)`` with one-hot rows ``[P, K]`` gives those prompts. The output equals ``segmenter``'s to
    float rounding. The text projection, timestep MLP and FiLM projections are dropped. The copy is valid for
    ``segmenter.num_inference_steps`` only (other steps would see timesteps outside the table).

    Args:
        segmenter: the inference network; its denoiser must be a conditioned SegOne (``cond_embed`` and FiLM
            blocks). It is not modified.

    Returns:
        The folded copy, in eval mode.

    Raises:
        ValueError: when the denoiser has no conditioning to fold.
    """
    denoiser = segmenter.denoiser
    cond_embed = getattr(denoiser, "cond_embed", None)
    projected = _conditioned_projections(denoiser)
    if cond_embed is None or not projected or isinstance(cond_embed, FoldedCondition):
        raise ValueError(
            f"fold_prompts needs a conditioned, unfolded denoiser (cond_embed and FiLM blocks); got "
            f"{type(denoiser).__name__} with cond_embed {type(cond_embed).__name__}"
        )
    prompts = segmenter.prompt_embeddings.detach()
    num_prompts = prompts.shape[0]
    steps = segmenter.sampling_timesteps(segmenter.num_inference_steps)
    num_steps = len(steps)
    # conditioning vectors of every (step, prompt) pair, step-major: [S * K, cond_channels]
    t = torch.tensor(steps, dtype=torch.long, device=prompts.device).repeat_interleave(num_prompts)
    cond = cond_embed(t, prompts.repeat(num_steps, 1))

    folded = copy.deepcopy(segmenter).eval()
    folded.denoiser.cond_embed = FoldedCondition(steps, num_prompts).to(prompts.device)
    for name, module in _conditioned_projections(folded.denoiser):
        table = dict(projected)[name].proj(cond)  # [S * K, 2 * C] for a FiLM, [S * K, C_out * C_in] for a layer
        proj = nn.Linear(num_steps * num_prompts, table.shape[1], bias=False).to(table)
        proj.weight.copy_(table.t())
        module.proj = proj
    folded.prompt_embeddings = torch.eye(num_prompts, dtype=prompts.dtype, device=prompts.device)
    return folded


# --- the edge artefact: file names, graph interface and manifest format ---------------------------------------------

EDGE_FORMAT = "segone-edge"
EDGE_FORMAT_VERSION = 1
FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
# weight-only int8 (quantize_weights): fp32 arithmetic, so the same masks in every runtime (the browser page's default)
INT8_WEIGHTS_FILE = "model.int8-weights.onnx"
MANIFEST_FILE = "model.json"
INPUT_NAMES = ("image", "prompts")
OUTPUT_NAMES = ("probs",)
# the default int8 recipe, chosen by scripts/experiments/quantization.py (docs/edge.md): per-tensor QDQ was as
# accurate as per-channel on MSD hippocampus and 7 % smaller; QDQ runs in more runtimes than QOperator
QUANTIZATION = {"quant_format": "QDQ", "per_channel": False, "op_types": ["Conv", "MatMul", "Gemm"]}


def export_folded_onnx(
    folded: PromptedSegmenter, filepath: PathLike, example_size: Sequence[int], max_size: int = 1024
) -> Path:
    """Exports a folded segmenter as ``image [1, C, *S], prompts [P, K] -> probs [1, 1 + P, *S]`` (fp32).

    The ``torch.export``-based exporter, as :func:`~bundle.export.export_onnx`, with the spatial sizes dynamic
    multiples of the denoiser's ``size_divisor`` and, in addition, the number of prompt rows ``P`` dynamic (which
    :func:`~bundle.export.export_onnx` does not offer: it makes only the first input's sizes dynamic). The batch is 1.

    Args:
        folded: the output of :func:`fold_prompts`.
        filepath: destination ``.onnx`` file, written atomically.
        example_size: spatial size of the example image (multiples of the size divisor).
        max_size: largest spatial size the graph accepts.

    Returns:
        The path written.
    """
    folded = folded.eval()
    denoiser = folded.denoiser
    divisor = int(getattr(denoiser, "size_divisor", 1))
    num_prompts = int(folded.prompt_embeddings.shape[0])
    channels = int(getattr(denoiser, "in_channels", 2)) - 1  # the denoiser also takes the noisy mask
    image = torch.zeros(1, channels, *example_size)
    image[(0, 0, *[s // 2 for s in example_size])] = 1.0
    spatial = {
        2 + i: torch.export.Dim(f"s{i}", min=1, max=max(1, max_size // divisor)) * divisor
        for i in range(len(example_size))
    }
    prompts_dim = {0: torch.export.Dim("P", min=1, max=max(2, 64 * num_prompts))}
    with atomic_path(filepath, suffix=".onnx") as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            folded,
            (image, torch.eye(num_prompts)),
            dynamo=True,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=(spatial, prompts_dim),
            custom_translation_table=ONNX_TRANSLATIONS,
            verbose=False,
        )
        program.save(str(tmp))
        _strip_debug_info(tmp)
    return Path(filepath)


def _compact_names(path: Path) -> None:
    """Renames every tensor but the graph's inputs and outputs to a short id and drops node names (a twentieth of
    an int8 file is the exporter's and quantiser's long names, ``denoiser.decoder.0.up.proj.weight_scale``).
    Graphs with sub-graphs or functions are left as they are."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    if model.functions or any(a.type in (a.GRAPH, a.GRAPHS) for n in graph.node for a in n.attribute):
        return
    keep = {v.name for v in list(graph.input) + list(graph.output)}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return names.setdefault(name, np.base_repr(len(names), 36).lower())

    for tensor in graph.initializer:
        tensor.name = short(tensor.name)
    for node in graph.node:
        node.name = ""
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
    del graph.value_info[:]
    onnx.save(model, str(path))


def _strip_debug_info(path: Path) -> None:
    """Drops what the exporter records for debugging (each node's source location and module stack, intermediate
    shapes): about a third of an int8 file's bytes, and nothing a runtime reads."""
    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del model.graph.value_info[:]
    onnx.save(model, str(path))


def calibration_windows(images: Iterable[torch.Tensor], inferer: Callable[..., torch.Tensor]) -> list[np.ndarray]:
    """The windows a sliding-window inferer hands the network for each image: what the model sees in use.

    Each image goes through ``inferer`` with a stand-in network that records its input windows (so they are padded
    and cut exactly as at inference) and returns zeros.

    Args:
        images: preprocessed images ``[1, C, *S]`` (e.g. the bundle's inference preprocessing of training cases).
        inferer: the bundle's inferer (``SlidingWindowInferer``); its ``sw_batch_size`` windows are split into
            single windows.

    Returns:
        float32 arrays ``[1, C, *roi]``, in the order seen.
    """
    windows: list[np.ndarray] = []

    def record(window: torch.Tensor) -> torch.Tensor:
        for w in window:
            windows.append(w.unsqueeze(0).detach().cpu().float().numpy())
        return torch.zeros(window.shape[0], 1, *window.shape[2:])

    with torch.no_grad():
        for image in images:
            inferer(torch.as_tensor(image).float(), record)
    return windows


class _WindowReader:
    """An onnxruntime ``CalibrationDataReader``: each window with the all-prompts one-hot."""

    def __init__(self, windows: Sequence[np.ndarray], num_prompts: int) -> None:
        self.feeds = iter([{INPUT_NAMES[0]: w, INPUT_NAMES[1]: np.eye(num_prompts, dtype=np.float32)} for w in windows])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.feeds, None)

    def rewind(self) -> None:  # called by some onnxruntime versions; one pass is all calibration needs
        pass


def quantize_edge(
    fp32_path: PathLike,
    int8_path: PathLike,
    windows: Sequence[np.ndarray],
    num_prompts: int,
    quant_format: str = QUANTIZATION["quant_format"],
    per_channel: bool = QUANTIZATION["per_channel"],
    op_types: Sequence[str] | None = QUANTIZATION["op_types"],
    pre_process: bool = True,
) -> Path:
    """onnxruntime static int8 quantisation of an exported edge graph, calibrated on ``windows`` (min-max).

    Args:
        fp32_path: the fp32 graph (:func:`export_folded_onnx`).
        int8_path: destination, written atomically.
        windows: calibration inputs ``[1, C, *roi]`` (:func:`calibration_windows`), each run with all prompts.
        num_prompts: ``K``, the width of the one-hot prompt rows.
        quant_format: ``"QDQ"`` (QuantizeLinear/DequantizeLinear pairs around float operators) or ``"QOperator"``
            (QLinearConv and other integer operators).
        per_channel: one weight scale per output channel (else per tensor).
        op_types: the operator types to quantise (``None``: every type onnxruntime can).
        pre_process: run ``quant_pre_process`` (shape inference, graph optimisation) first.

    Returns:
        The path written.

    Raises:
        ValueError: when ``windows`` is empty or ``quant_format`` is unknown.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not windows:
        raise ValueError("no calibration windows: the calibration split has no images")
    formats = {"QDQ": QuantFormat.QDQ, "QOperator": QuantFormat.QOperator}
    if quant_format not in formats:
        raise ValueError(f"quant_format must be one of {sorted(formats)}, got {quant_format!r}")
    int8_path = Path(int8_path)
    with tempfile.TemporaryDirectory(dir=int8_path.parent) as work:
        source = Path(fp32_path)
        if pre_process:
            prepared = Path(work) / "prepared.onnx"
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
            source = prepared
        with atomic_path(int8_path, suffix=".onnx") as tmp:
            quantize_static(
                str(source),
                str(tmp),
                _WindowReader(windows, num_prompts),
                quant_format=formats[quant_format],
                op_types_to_quantize=list(op_types) if op_types is not None else None,
                per_channel=per_channel,
                activation_type=QuantType.QInt8 if quant_format == "QDQ" else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"CalibTensorRangeSymmetric": False},
            )
            _compact_names(tmp)
    return int8_path


def quantize_weights(fp32_path: PathLike, int8_path: PathLike, op_types: Sequence[str] = ("Conv",)) -> Path:
    """Weight-only int8: each weight of ``op_types`` stored as int8 with one symmetric scale per output channel and
    dequantised in the graph (``DequantizeLinear`` in front of the float operator); activations stay float.

    The file is about as small as a static int8 graph's, the arithmetic is fp32's, so every runtime (onnxruntime on
    x86, onnxruntime-web's WebAssembly) computes the same mask, and no calibration data is needed.

    Args:
        fp32_path: the fp32 graph (:func:`export_folded_onnx`).
        int8_path: destination, written atomically.
        op_types: the operator types whose weight (input 1, an initializer) is quantised.

    Returns:
        The path written.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(fp32_path))
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    weights = sorted({n.input[1] for n in graph.node if n.op_type in op_types and n.input[1] in initializers})
    dequantize = []
    for name in weights:
        w = numpy_helper.to_array(initializers[name]).astype(np.float32)
        scale = np.abs(w.reshape(w.shape[0], -1)).max(axis=1) / 127.0
        scale[scale == 0] = 1.0
        q = np.clip(np.round(w / scale.reshape(-1, *[1] * (w.ndim - 1))), -127, 127).astype(np.int8)
        graph.initializer.remove(initializers[name])
        graph.initializer.extend(
            [
                numpy_helper.from_array(q, f"{name}_q"),
                numpy_helper.from_array(scale.astype(np.float32), f"{name}_scale"),
                numpy_helper.from_array(np.zeros(w.shape[0], np.int8), f"{name}_zero"),
            ]
        )
        dequantize.append(
            helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_scale", f"{name}_zero"], [name], axis=0)
        )
    for node in reversed(dequantize):  # the graph's nodes are in topological order: the weights come first
        graph.node.insert(0, node)
    with atomic_path(int8_path, suffix=".onnx") as tmp:
        onnx.save(model, str(tmp))
    return Path(int8_path)


def edge_manifest(
    folded: PromptedSegmenter,
    prompts: Sequence[str],
    label_values: Sequence[int],
    prompt_embeddings: torch.Tensor,
    roi_size: Sequence[int],
    overlap: float,
    files: Mapping[str, PathLike],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``model.json`` of an edge export: everything a runtime needs besides the graphs.

    Args:
        folded: the folded segmenter that was exported.
        prompts: the ``K`` prompt texts, in the order of the one-hot columns.
        label_values: the label value of each prompt (``channel_def``).
        prompt_embeddings: ``[K, E]``, the original (unfolded) prompt embeddings, in the same order; a runtime
            that receives embeddings (the bundle's prompt route) matches them against these.
        roi_size: the sliding-window patch size.
        overlap: the sliding-window overlap.
        files: ``{"fp32": path, "int8": path, ...}`` of the graphs written (their folder is the manifest's).
        extra: further entries (quantisation recipe, calibration data, checkpoint).

    Returns:
        A JSON-serialisable dict (keys in ``docs/edge.md``).
    """
    from bundle.utils.config import bundle_version

    denoiser = folded.denoiser
    spatial_dims = int(denoiser.spatial_dims)
    axes = ["D", "H", "W"][-spatial_dims:]
    models = {
        kind: {"file": Path(path).name, "sha256": file_sha256(path), "bytes": Path(path).stat().st_size}
        for kind, path in files.items()
    }
    manifest: dict[str, Any] = {
        "format": EDGE_FORMAT,
        "format_version": EDGE_FORMAT_VERSION,
        "bundle_version": bundle_version(),
        "spatial_dims": spatial_dims,
        "class_names": {str(int(v)): str(p) for v, p in zip(label_values, prompts)},
        "prompts": [str(p) for p in prompts],
        "label_values": [int(v) for v in label_values],
        "prompt_embeddings": prompt_embeddings.detach().cpu().float().tolist(),
        "inputs": {
            INPUT_NAMES[0]: {
                "dtype": "float32",
                "shape": [1, int(denoiser.in_channels) - 1, *axes],
                "layout": "NC" + "".join(axes),
                "description": "one preprocessed window; every spatial size a multiple of size_divisor",
            },
            INPUT_NAMES[1]: {
                "dtype": "float32",
                "shape": ["P", int(folded.prompt_embeddings.shape[0])],
                "layout": "PK",
                "description": "one-hot rows choosing P of the K prompts (column k is prompts[k])",
            },
        },
        "outputs": {
            OUTPUT_NAMES[0]: {
                "dtype": "float32",
                "shape": [1, "1+P", *axes],
                "layout": "NC" + "".join(axes),
                "description": "probabilities: background first, then one channel per prompt row; sum to one",
            }
        },
        "roi_size": [int(s) for s in roi_size],
        "overlap": float(overlap),
        "sliding_window": {"mode": "gaussian", "sigma_scale": 0.125, "padding_mode": "constant", "cval": 0.0},
        "size_divisor": int(denoiser.size_divisor),
        "orientation": "RAS",
        "normalization": {"kind": "zscore", "nonzero": True, "channel_wise": True},
        "num_inference_steps": int(folded.num_inference_steps),
        "num_samples": int(folded.num_samples),
        "seed": int(folded.seed),
        "sampling_timesteps": folded.sampling_timesteps(folded.num_inference_steps),
        "models": models,
    }
    manifest.update(dict(extra or {}))
    return manifest


def export_edge(
    segmenter: PromptedSegmenter,
    output_dir: PathLike,
    prompts: Sequence[str],
    label_values: Sequence[int],
    roi_size: Sequence[int],
    overlap: float,
    windows: Sequence[np.ndarray],
    quantization: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Writes ``model.onnx`` (fp32), ``model.int8.onnx`` (static int8), ``model.int8-weights.onnx`` (weight-only
    int8) and ``model.json`` of the folded ``segmenter``.

    Each file is written atomically; the manifest comes last, with the hashes of the graphs it describes.

    Args:
        segmenter: the inference network with its weights (not modified).
        output_dir: the destination folder (created).
        prompts: the prompt text of each row of ``segmenter.prompt_embeddings``.
        label_values: the label value of each prompt.
        roi_size: the sliding-window patch size (also the export example's size).
        overlap: the sliding-window overlap.
        windows: int8 calibration inputs (:func:`calibration_windows`).
        quantization: arguments of :func:`quantize_edge` (default :data:`QUANTIZATION`).
        extra: further manifest entries.

    Returns:
        The manifest written to ``model.json``.

    Raises:
        ValueError: when ``prompts`` or ``label_values`` do not have one entry per prompt embedding.
    """
    embeddings = segmenter.prompt_embeddings.detach().cpu()
    if len(prompts) != embeddings.shape[0] or len(label_values) != embeddings.shape[0]:
        raise ValueError(
            f"{embeddings.shape[0]} prompt embeddings but {len(prompts)} prompt texts and "
            f"{len(label_values)} label values"
        )
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    folded = fold_prompts(segmenter.cpu().eval())
    fp32 = export_folded_onnx(folded, out / FP32_FILE, roi_size)
    recipe = {**QUANTIZATION, **dict(quantization or {})}
    int8 = quantize_edge(fp32, out / INT8_FILE, windows, embeddings.shape[0], **recipe)
    int8_weights = quantize_weights(fp32, out / INT8_WEIGHTS_FILE)
    graphs = {"fp32": fp32, "int8": int8, "int8_weights": int8_weights}
    example = (torch.from_numpy(windows[0]), torch.eye(embeddings.shape[0]))
    checks = {f"{kind}_max_abs_diff": compare_onnx(folded, path, example) for kind, path in graphs.items()}
    manifest = edge_manifest(
        folded,
        prompts,
        label_values,
        embeddings,
        roi_size,
        overlap,
        graphs,
        {"quantization": recipe, "checks": checks, **dict(extra or {})},
    )
    write_text_atomic(out / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
    return manifest
