"""Export: TorchScript (script and trace) and ONNX (dynamic spatial sizes), checked against PyTorch."""

from __future__ import annotations

import pytest
import torch

from bundle.export import compare_onnx, export_onnx, export_torchscript
from bundle.networks import SegOne
from bundle.networks.receptive_field import activate_zero_init


def _conditioned(spatial_dims: int) -> SegOne:
    torch.manual_seed(0)
    net = SegOne(spatial_dims, 2, 2, features=(8, 16, 32), with_timestep=True, text_dim=8)
    # FiLM and global context start at zero; the export must carry them, so give them weights
    return activate_zero_init(net).eval()


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_torchscript_script_matches_eager(tmp_path, spatial_dims):
    net = _conditioned(spatial_dims)
    path = export_torchscript(net, tmp_path / "segone.ts")
    loaded = torch.jit.load(str(path))
    for size in (16, 32):
        x = torch.rand(2, 2, *([size] * spatial_dims))
        t, c = torch.tensor([0, 999]), torch.randn(2, 8)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x, t, c), net(x, t, c), rtol=1e-5, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["segone.ts"], "temporary files left behind"


def test_torchscript_keeps_input_checks(tmp_path):
    loaded = torch.jit.load(str(export_torchscript(SegOne(3, 1, 2, features=(8, 16)), tmp_path / "m.ts")))
    with pytest.raises(torch.jit.Error, match="multiple of 2"):
        loaded(torch.rand(1, 1, 3, 4, 4))


def test_torchscript_trace_of_default_network(tmp_path):
    torch.manual_seed(0)
    net = SegOne(3, 1, 3).eval()
    x = torch.rand(1, 1, 48, 64, 48)
    loaded = torch.jit.load(str(export_torchscript(net, tmp_path / "traced.ts", trace_inputs=(x,))))
    with torch.no_grad():
        # the trace records plain convolutions, eager mode runs batched products: another summation order. Over
        # seeds 0-11 the largest difference beyond rtol 1e-5 was 1.55e-5 (1.04e-5 for seed 0), so the unseeded
        # test with atol 1e-5 could fail by chance
        torch.testing.assert_close(loaded(x), net(x), rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("spatial_dims,sizes", [(2, [(32, 32), (64, 48), (4, 8)]), (3, [(16, 16, 16), (32, 16, 48)])])
def test_onnx_matches_pytorch_at_several_sizes(tmp_path, spatial_dims, sizes):
    net = _conditioned(spatial_dims)
    example = (torch.rand(1, 2, *sizes[0]), torch.tensor([7]), torch.randn(1, 8))
    path = export_onnx(net, tmp_path / "segone.onnx", example, input_names=("image", "timesteps", "context"))
    for size in sizes:
        inputs = (torch.rand(1, 2, *size), torch.tensor([500]), torch.randn(1, 8))
        assert compare_onnx(net, path, inputs) < 1e-4, f"ONNX differs from PyTorch at {size}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["segone.onnx"]


def test_onnx_plain_network(tmp_path):
    torch.manual_seed(0)
    net = SegOne(3, 1, 3, features=(8, 16, 32)).eval()
    path = export_onnx(net, tmp_path / "plain.onnx", (torch.rand(1, 1, 16, 16, 16),))
    assert compare_onnx(net, path, (torch.rand(1, 1, 32, 16, 16),)) < 1e-4


@pytest.mark.parametrize("neighbours", ["refine_neighbours", "refine_hidden_neighbours"])
def test_onnx_and_torchscript_of_the_neighbour_refinement(tmp_path, neighbours):
    """The refinements that see the input's or their hidden channels' face neighbours export: the shifts are pads
    and slices."""
    torch.manual_seed(0)
    net = SegOne(
        3, 2, 1, features=(8, 16, 32), stem_scale=2, refine_channels=4, refine_inputs=[1], **{neighbours: True}
    )
    net = activate_zero_init(net).eval()
    path = export_onnx(net, tmp_path / "near.onnx", (torch.rand(1, 2, 16, 16, 16),))
    assert compare_onnx(net, path, (torch.rand(1, 2, 32, 16, 24),)) < 1e-4
    loaded = torch.jit.load(str(export_torchscript(net, tmp_path / "near.ts")))
    x = torch.rand(1, 2, 16, 24, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), rtol=1e-5, atol=1e-5)


def test_onnx_and_torchscript_of_a_shared_decoder_with_prompt_layers(tmp_path):
    """Prompt-controlled layers (``prompt_layers``) export: a batched product with each item's own matrix."""
    torch.manual_seed(0)
    net = SegOne(
        3, 2, 1, features=(8, 16, 32), stem_scale=2, refine_channels=4, refine_inputs=[1], decoder_inputs=[0],
        with_timestep=True, text_dim=8, shared_decoder=True, prompt_layers=2,
    )  # fmt: skip
    net = activate_zero_init(net).eval()
    example = (torch.rand(2, 2, 16, 16, 16), torch.tensor([7, 900]), torch.randn(2, 8))
    path = export_onnx(net, tmp_path / "layers.onnx", example, input_names=("image", "timesteps", "context"))
    inputs = (torch.rand(2, 2, 32, 16, 24), torch.tensor([500, 999]), torch.randn(2, 8))
    assert compare_onnx(net, path, inputs) < 1e-4
    loaded = torch.jit.load(str(export_torchscript(net, tmp_path / "layers.ts")))
    with torch.no_grad():
        torch.testing.assert_close(loaded(*inputs), net(*inputs), rtol=1e-5, atol=1e-5)
