"""Edge export: folded conditioning equals the unfolded sampler; the fp32/int8 graphs and model.json; CLI errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bundle.diffusion import PromptedSegmenter
from bundle.export.edge import (
    FP32_FILE,
    INPUT_NAMES,
    INT8_FILE,
    INT8_WEIGHTS_FILE,
    MANIFEST_FILE,
    OUTPUT_NAMES,
    FoldedCondition,
    export_edge,
    fold_prompts,
)
from bundle.networks import ConditionedPointwise, ConditionEmbedding, FiLM, SegOne
from bundle.networks.receptive_field import activate_zero_init
from bundle.utils.io import file_sha256


def _segmenter(
    spatial_dims: int,
    steps: int,
    num_prompts: int = 3,
    embed_dim: int = 6,
    shared_decoder: bool = False,
    prompt_layers: int = 0,
) -> PromptedSegmenter:
    torch.manual_seed(0)
    denoiser = SegOne(
        spatial_dims,
        2,
        1,
        features=(4, 8, 16),
        stem_scale=2,
        refine_channels=4,
        refine_inputs=[1],
        with_timestep=True,
        text_dim=embed_dim,
        cond_channels=16,
        decoder_inputs=[0] if shared_decoder else None,
        shared_decoder=shared_decoder,
        prompt_layers=prompt_layers,
    )
    # FiLM projections and the global-context output start at zero: give them weights, as after training
    activate_zero_init(denoiser, std=0.3)
    embeddings = torch.randn(num_prompts, embed_dim)
    return PromptedSegmenter(denoiser, prompt_embeddings=embeddings, num_inference_steps=steps).eval()


@pytest.mark.parametrize(
    "spatial_dims,shared_decoder,prompt_layers", [(2, False, 0), (3, False, 0), (3, True, 0), (3, True, 2)]
)
@pytest.mark.parametrize("steps", [1, 2])
def test_folded_prompts_give_the_unfolded_output(spatial_dims, steps, shared_decoder, prompt_layers):
    seg = _segmenter(spatial_dims, steps, shared_decoder=shared_decoder, prompt_layers=prompt_layers)
    films = [m for m in seg.denoiser.modules() if isinstance(m, (FiLM, ConditionedPointwise))]
    assert sum(isinstance(m, ConditionedPointwise) for m in films) == prompt_layers
    assert films and all(m.proj.weight.abs().sum() > 0 for m in films)
    folded = fold_prompts(seg)
    x = torch.rand(2, 1, *([16, 24, 32][:spatial_dims]))
    torch.testing.assert_close(folded(x), seg(x), rtol=0, atol=1e-5)
    # a subset of the prompts, in another order: one-hot rows against the original embeddings
    rows = torch.eye(3)[[2, 0]]
    torch.testing.assert_close(folded(x, rows), seg(x, seg.prompt_embeddings[[2, 0]]), rtol=0, atol=1e-5)
    torch.testing.assert_close(folded(x, torch.eye(3)[[1]]), seg(x, seg.prompt_embeddings[[1]]), rtol=0, atol=1e-5)
    # the conditioning is a table now: no text projection, no timestep MLP, one bias-free S*K -> 2C map per FiLM
    assert isinstance(folded.denoiser.cond_embed, FoldedCondition)
    assert torch.equal(folded.prompt_embeddings, torch.eye(3))
    for film in (m for m in folded.denoiser.modules() if isinstance(m, (FiLM, ConditionedPointwise))):
        assert film.proj.in_features == steps * 3 and film.proj.bias is None
    removed = sum(p.numel() for p in seg.parameters()) - sum(p.numel() for p in folded.parameters())
    cond = sum(p.numel() for p in seg.denoiser.cond_embed.parameters()) + sum(
        p.numel() for m in films for p in m.proj.parameters()
    )
    assert removed == cond - sum(m.proj.out_features * steps * 3 for m in films)
    # the original is untouched
    assert isinstance(seg.denoiser.cond_embed, ConditionEmbedding) and seg.prompt_embeddings.shape == (3, 6)


def test_folded_condition_selects_one_pair_and_nothing_off_the_grid():
    cond = FoldedCondition([999, 499], num_prompts=3)
    out = cond(torch.tensor([499, 999, 7]), torch.eye(3)[[2, 0, 1]])
    expected = torch.zeros(3, 6)
    expected[0, 1 * 3 + 2] = 1.0
    expected[1, 0 * 3 + 0] = 1.0  # timestep 7 is not a sampling step: zero, FiLM is then the identity
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match="one-hot"):
        cond(torch.tensor([999]), None)


def test_fold_prompts_needs_an_unfolded_conditioned_denoiser():
    seg = _segmenter(2, 1)
    with pytest.raises(ValueError, match="unfolded"):
        fold_prompts(fold_prompts(seg))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    seg = _segmenter(3, 2, num_prompts=2)
    windows = [np.random.default_rng(i).normal(size=(1, 1, 16, 16, 16)).astype(np.float32) for i in range(3)]
    out = tmp_path_factory.mktemp("edge")
    manifest = export_edge(
        seg, out, ["anterior hippocampus", "posterior hippocampus"], [1, 2], [16, 16, 16], 0.25, windows
    )
    return seg, out, manifest


@pytest.mark.slow
def test_export_writes_graphs_and_manifest(exported):
    import onnxruntime as ort

    seg, out, manifest = exported
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [FP32_FILE, INT8_FILE, INT8_WEIGHTS_FILE, MANIFEST_FILE]
    ), "leftovers"
    assert json.loads((out / MANIFEST_FILE).read_text()) == manifest
    assert manifest["format"] == "segone-edge" and manifest["format_version"] == 1
    assert manifest["prompts"] == ["anterior hippocampus", "posterior hippocampus"]
    assert manifest["class_names"] == {"1": "anterior hippocampus", "2": "posterior hippocampus"}
    np.testing.assert_array_equal(np.array(manifest["prompt_embeddings"], dtype=np.float32), seg.prompt_embeddings)
    assert manifest["size_divisor"] == 8 and manifest["roi_size"] == [16, 16, 16] and manifest["orientation"] == "RAS"
    assert manifest["sliding_window"]["mode"] == "gaussian" and manifest["sliding_window"]["sigma_scale"] == 0.125
    assert manifest["num_inference_steps"] == 2 and manifest["sampling_timesteps"] == [999, 499]
    for kind, name in (("fp32", FP32_FILE), ("int8", INT8_FILE), ("int8_weights", INT8_WEIGHTS_FILE)):
        entry = manifest["models"][kind]
        assert entry["file"] == name and entry["sha256"] == file_sha256(out / name)
        assert entry["bytes"] == (out / name).stat().st_size
    assert manifest["models"]["int8"]["bytes"] < manifest["models"]["fp32"]["bytes"]
    assert manifest["models"]["int8_weights"]["bytes"] < manifest["models"]["fp32"]["bytes"]
    assert manifest["checks"]["fp32_max_abs_diff"] < 1e-4

    fp32 = ort.InferenceSession(str(out / FP32_FILE), providers=["CPUExecutionProvider"])
    assert [i.name for i in fp32.get_inputs()] == list(INPUT_NAMES)
    assert [o.name for o in fp32.get_outputs()] == list(OUTPUT_NAMES)
    assert fp32.get_inputs()[1].shape[1] == 2 and isinstance(fp32.get_inputs()[1].shape[0], str)  # dynamic P
    int8 = ort.InferenceSession(str(out / INT8_FILE), providers=["CPUExecutionProvider"])
    x = torch.randn(1, 1, 24, 16, 32)  # another size than the example's
    for rows in ([0, 1], [1]):
        feeds = {"image": x.numpy(), "prompts": np.eye(2, dtype=np.float32)[rows]}
        (probs,) = fp32.run(None, feeds)
        expected = seg(x, seg.prompt_embeddings[rows]).numpy()
        np.testing.assert_allclose(probs, expected, atol=1e-4)
        (quantised,) = int8.run(None, feeds)
        assert quantised.shape == expected.shape == (1, 1 + len(rows), 24, 16, 32)
        np.testing.assert_allclose(quantised.sum(1), 1.0, atol=1e-3)


@pytest.mark.slow
def test_weight_only_int8_stores_int8_weights_and_computes_in_float(exported, tmp_path):
    import onnx
    import onnxruntime as ort

    from bundle.export.edge import quantize_weights

    _, out, _ = exported
    path = quantize_weights(out / FP32_FILE, tmp_path / "weights.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.onnx"]
    graph = onnx.load(str(path)).graph
    convs = [n for n in graph.node if n.op_type == "Conv"]
    int8_inits = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.INT8}
    assert convs and all(n.input[1] + "_q" in int8_inits for n in convs)
    feeds = {"image": np.random.default_rng(0).normal(size=(1, 1, 16, 24, 16)).astype(np.float32)}
    feeds["prompts"] = np.eye(2, dtype=np.float32)
    outputs = {}
    for level in (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_DISABLE_ALL):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        outputs[level] = session.run(None, feeds)[0]
    (reference,) = ort.InferenceSession(str(out / FP32_FILE), providers=["CPUExecutionProvider"]).run(None, feeds)
    # float arithmetic: the same result however the runtime arranges the graph (a static int8 graph's is not)
    np.testing.assert_allclose(*outputs.values(), atol=1e-5)
    assert np.abs(outputs[ort.GraphOptimizationLevel.ORT_ENABLE_ALL] - reference).max() < 0.1


def test_cli_names_a_missing_checkpoint_and_an_unknown_config(tmp_path, capsys):
    from bundle.cli.export_edge import main

    missing = tmp_path / "absent.pt"
    assert (
        main(["--output_dir", str(tmp_path / "out"), "--config_file", "inference.json", "--ckpt_path", str(missing)])
        == 1
    )
    assert f"{missing}: checkpoint not found" in capsys.readouterr().err
    assert main(["--output_dir", str(tmp_path / "out"), "--config_file", "inference.json,nosuch.json"]) == 1
    err = capsys.readouterr().err
    assert "nosuch.json: no such bundle config" in err and "edge.json" in err
    assert not (tmp_path / "out").exists()


def test_cli_refuses_a_network_with_coordinate_channels(tmp_path, capsys):
    """The edge runtimes' preprocessing gives the network the image alone: a model trained with the voxels'
    positions as channels is refused by name before anything is written."""
    from bundle.cli.export_edge import main

    argv = ["--output_dir", str(tmp_path / "out"), "--set", "coordinate_channels=true"]
    assert main([*argv, "--ckpt_path", str(tmp_path / "absent.pt")]) == 1
    assert "coordinate_channels: the edge export's preprocessing" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_names_a_checkpoint_of_another_network(tmp_path, capsys):
    from bundle.cli.export_edge import main
    from bundle.utils.config import BUNDLE_ROOT

    # the shipped model has the 1.85 M-parameter network, not the edge network of edge.json
    shipped = BUNDLE_ROOT / "models" / "model.pt"
    if not shipped.is_file():
        pytest.skip(f"needs {shipped}")
    assert main(["--output_dir", str(tmp_path / "out"), "--ckpt_path", str(shipped)]) == 1
    err = capsys.readouterr().err
    assert f"{shipped}: checkpoint does not fit PromptedSegmenter" in err and "shape mismatch" in err


def test_shipped_edge_export_is_of_the_shipped_edge_model():
    # models/edge holds the export the browser page serves (make web): it must describe these very files and weights
    from bundle.utils.config import BUNDLE_ROOT, bundle_version

    folder = BUNDLE_ROOT / "models" / "edge"
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    assert manifest["checkpoint"]["sha256"] == file_sha256(folder / "model.pt")
    assert manifest["bundle_version"] == bundle_version()
    for kind, name in (("fp32", FP32_FILE), ("int8", INT8_FILE), ("int8_weights", INT8_WEIGHTS_FILE)):
        assert manifest["models"][kind]["file"] == name
        assert manifest["models"][kind]["sha256"] == file_sha256(folder / name)
    for name in (INT8_FILE, INT8_WEIGHTS_FILE):  # the edge target: an int8 model of at most 1 MB
        assert (folder / name).stat().st_size <= 1_000_000
    assert manifest["prompts"] == ["anterior hippocampus", "posterior hippocampus"]
