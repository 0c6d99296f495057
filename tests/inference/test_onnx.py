"""OnnxSegmenter: an edge export behind the inference network's interface, and --onnx_path in the bundle's configs.

A tiny model (the real configs shrunk by overrides) is saved as a SegOne model file, exported with the
``segone-export-edge`` code path on a synthetic MSD folder, then run through the bundle's sliding windows, prompt
route, inference and evaluation workflows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bundle.export.edge import FP32_FILE, INT8_FILE, MANIFEST_FILE
from bundle.utils.cli import bundle_override_args
from tests.helpers.bundle_runs import SMALL, TINY_CLIP_DIM, bundle_cli, error_chain, infer_overrides, workflow

# every test here exports a graph (about a minute on two cores)
pytestmark = pytest.mark.slow

PROMPTS = ["anterior hippocampus", "posterior hippocampus"]
OVERRIDES = {**SMALL, "text_dim": TINY_CLIP_DIM, "num_inference_steps": 1}


@pytest.fixture(scope="module")
def export(tmp_path_factory, msd_dir) -> tuple[Path, Path]:
    """``(model file, export folder)``: a tiny model with weights in every branch, exported by the CLI's code."""
    from bundle.cli.export_edge import run_export
    from bundle.networks.receptive_field import activate_zero_init
    from bundle.text import PromptEmbeddingTable
    from bundle.utils.checkpoint import model_structure_volumes, save_model
    from bundle.utils.config import load_bundle_config

    root = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    net = load_bundle_config("inference.json", overrides=OVERRIDES).get_parsed_content("network_def")
    activate_zero_init(net, std=0.3)
    embeddings = torch.randn(2, TINY_CLIP_DIM)
    net.prompt_embeddings.copy_(embeddings)
    table = PromptEmbeddingTable(dict(zip(PROMPTS + ["extra prompt"], torch.cat([embeddings, torch.randn(1, 32)]))))
    volumes = {"anterior hippocampus": 1.5, "posterior hippocampus": 1.25}
    ckpt = save_model(net, root / "model.pt", table, {"bundle_version": "test", "structure_volumes_ml": volumes})
    out = root / "edge"
    manifest = run_export(out, "inference.json", ckpt, msd_dir, calibration_cases=2, overrides=OVERRIDES)
    # the "absent" rule's scale travels with the graph
    assert model_structure_volumes(None, out / FP32_FILE) == manifest["structure_volumes_ml"] == volumes
    assert manifest["absent_rule"] == {"min_answer_ml": 0.0, "answer_volume_fraction": 0.2}  # inference.json's
    # 27 windows of 16^3 (overlap 0.25) tile each 32x40x32 phantom
    assert manifest["calibration"] == {"dataset_dir": msd_dir.name, "split": "train", "cases": 2, "windows": 54}
    assert manifest["parameters"]["folded"] < manifest["parameters"]["pytorch"]
    return ckpt, out


def _network(ckpt: Path):
    from bundle.utils.checkpoint import load_weights
    from bundle.utils.config import load_bundle_config

    parser = load_bundle_config("inference.json", overrides={**OVERRIDES, "ckpt_path": str(ckpt)})
    return load_weights(parser.get_parsed_content("network_def"), ckpt).eval(), parser


def test_onnx_segmenter_matches_pytorch_through_sliding_windows(export):
    from bundle.inference import OnnxSegmenter, prompted_inference

    ckpt, out = export
    net, parser = _network(ckpt)
    inferer = parser.get_parsed_content("inferer")
    onnx = OnnxSegmenter(out / FP32_FILE, intra_op_num_threads=1, allow_spinning=False)
    assert onnx.prompts == PROMPTS
    image = torch.randn(2, 1, 20, 35, 16)  # padded and tiled by the inferer; a batch of two
    torch.testing.assert_close(
        prompted_inference(inferer, onnx, image), prompted_inference(inferer, net, image), rtol=0, atol=1e-4
    )
    chosen = net.prompt_embeddings[[1]]  # the prompt route: embeddings in, those prompts' probabilities out
    expected = prompted_inference(inferer, net, image, chosen)
    torch.testing.assert_close(prompted_inference(inferer, onnx, image, chosen), expected, rtol=0, atol=1e-4)
    int8 = OnnxSegmenter(out / INT8_FILE, intra_op_num_threads=1)
    quantised = prompted_inference(inferer, int8, image, chosen)
    assert quantised.shape == expected.shape == (2, 2, 20, 35, 16)


def test_prompts_run_in_parallel_give_the_graphs_probabilities(export):
    from bundle.inference import OnnxSegmenter

    _, out = export
    joint = OnnxSegmenter(out / FP32_FILE, intra_op_num_threads=1)
    parallel = OnnxSegmenter(out / FP32_FILE, prompt_workers=2)
    image = torch.randn(2, 1, 16, 16, 16)
    torch.testing.assert_close(parallel(image), joint(image), rtol=0, atol=1e-5)
    one = joint.prompt_embeddings[[1]]  # a single prompt takes the one-call path
    torch.testing.assert_close(parallel(image, one), joint(image, one), rtol=0, atol=0)
    with pytest.raises(ValueError, match="prompt_workers must be >= 1"):
        OnnxSegmenter(out / FP32_FILE, prompt_workers=0)


def test_onnx_segmenter_errors_name_the_file(export, tmp_path):
    from bundle.inference import OnnxSegmenter

    _, out = export
    onnx = OnnxSegmenter(out / INT8_FILE, intra_op_num_threads=1)
    with pytest.raises(ValueError, match=rf"{INT8_FILE}: prompt embedding\(s\) \[0\] are not in the exported"):
        onnx(torch.randn(1, 1, 16, 16, 16), torch.randn(1, TINY_CLIP_DIM))
    with pytest.raises(ValueError, match="multiple of 8"):
        onnx(torch.randn(1, 1, 12, 16, 16))
    lonely = tmp_path / "model.onnx"
    lonely.write_bytes((out / FP32_FILE).read_bytes())
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / MANIFEST_FILE}: not found"):
        OnnxSegmenter(lonely)
    with pytest.raises(FileNotFoundError, match="absent.onnx: ONNX file not found"):
        OnnxSegmenter(tmp_path / "absent.onnx")


def test_inference_config_runs_the_onnx_model_with_a_prompt(export, msd_dir, tmp_path):
    """--onnx_path: the network is the graph, and --prompts are looked up in model.json (no checkpoint read)."""
    _, out = export
    absent = tmp_path / "absent.pt"
    overrides = infer_overrides(absent, msd_dir, tmp_path / "seg", onnx_path=str(out / INT8_FILE))
    wf = workflow("inference.json", "infer", **{**overrides, "prompts": "Posterior Hippocampus"})
    wf.initialize()
    wf.run()
    assert json.loads((tmp_path / "seg" / "labels.json").read_text()) == {
        "0": "background",
        "2": "posterior hippocampus",
    }
    assert len(list((tmp_path / "seg").glob("*_seg.nii.gz"))) == 6

    wf = workflow("inference.json", "infer", **{**overrides, "prompts": "extra prompt"})
    wf.initialize()
    with pytest.raises(Exception) as err:
        wf.run()
    assert "UnknownPromptError" in error_chain(err.value) and "'extra prompt'" in error_chain(err.value)


def test_evaluate_command_with_onnx_path_writes_metrics(export, msd_dir, tmp_path):
    _, out = export
    result = bundle_cli(
        "run",
        "evaluating",
        "--config_file",
        "configs/evaluate.json",
        "--meta_file",
        "configs/metadata.json",
        "--onnx_path",
        str(out / INT8_FILE),
        "--ckpt_path",
        str(tmp_path / "absent.pt"),
        "--eval_split",
        "test",
        "--test_fraction",
        "0.34",
        "--dataset_dir",
        str(msd_dir),
        "--output_dir",
        str(tmp_path / "eval"),
        *bundle_override_args(OVERRIDES),
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    keys = {"dice", "iou", "hd95", "surface_dice", "precision", "recall"}
    assert set(metrics) == {"mean", "classes", "cases"} and set(metrics["mean"]) == keys
    assert set(metrics["classes"]) == set(PROMPTS) and len(metrics["cases"]) == 2
    assert all(0.0 <= np.float64(c["posterior hippocampus"]["dice"]) <= 1.0 for c in metrics["cases"])


def test_compile_is_refused_for_an_exported_graph(export):
    from bundle.inference import OnnxSegmenter, compile_network, with_flips

    onnx = OnnxSegmenter(export[1] / FP32_FILE, intra_op_num_threads=1)
    for network in (onnx, with_flips(onnx, [[], [0]])):
        with pytest.raises(ValueError, match=rf"compile=True applies to the PyTorch model; .*{FP32_FILE}"):
            compile_network(network, True)
    assert compile_network(onnx, False) is onnx
