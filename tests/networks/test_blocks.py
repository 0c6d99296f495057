"""SegOne building blocks: data movement is exact, learned blocks keep shapes."""

from __future__ import annotations

import pytest
import torch
from monai.networks.utils import pixelshuffle, pixelunshuffle
from torch.utils._python_dispatch import TorchDispatchMode

from bundle.networks.blocks import (
    ChannelMixBlock,
    ConditionedPointwise,
    FiLM,
    GlobalContext,
    InstanceNorm,
    ShuffleUp,
    SpatialShift,
    UnshuffleDown,
    _shuffle_for_export,
    _unshuffle_for_export,
    channel_map,
    conv1x1,
    exporting,
    face_neighbours,
    norm_layer,
    pixel_shuffle,
    pixel_unshuffle,
    skip_bias_before,
    sum_face_neighbours,
)


@pytest.mark.parametrize("spatial_dims,shape", [(2, (2, 3, 8, 6)), (3, (1, 2, 4, 6, 8))])
def test_pixel_unshuffle_matches_monai_and_inverts_pixelshuffle(spatial_dims, shape):
    x = torch.randn(*shape)
    y = pixel_unshuffle(x, spatial_dims, 2)
    assert torch.equal(y, pixelunshuffle(x, spatial_dims, 2))
    assert torch.equal(pixelshuffle(y, spatial_dims, 2), x)


@pytest.mark.parametrize(
    "spatial_dims,r,shape", [(2, 2, (2, 12, 3, 5)), (2, 3, (1, 18, 4, 2)), (3, 2, (2, 16, 3, 4, 5))]
)
def test_export_time_shuffles_equal_monais(spatial_dims, r, shape):
    # while exporting, the shuffles are DepthToSpace/SpaceToDepth plus plane moves (onnxruntime runs rank-8
    # transposes slowly, and single-element moves slowly on two threads)
    x = torch.randn(*shape)
    up = _shuffle_for_export(x, spatial_dims, r)
    assert torch.equal(up, pixelshuffle(x, spatial_dims, r))
    assert torch.equal(pixel_shuffle(x, spatial_dims, r), up)
    assert torch.equal(_unshuffle_for_export(up, spatial_dims, r), pixelunshuffle(up, spatial_dims, r))


def test_torch_compile_takes_the_eager_forms_and_torch_export_the_export_forms():
    # torch.compile runs on libtorch: the export forms (plain 1x1 convolutions, rank-4 shuffles) only slow it down
    class Flag(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + float(exporting())

    x = torch.zeros(1)
    assert Flag()(x).item() == 0.0
    assert torch.compile(Flag(), backend="eager")(x).item() == 0.0
    assert torch.export.export(Flag(), (x,)).module()(x).item() == 1.0


@pytest.mark.parametrize("spatial_dims,shape", [(2, (1, 2, 8, 6)), (3, (1, 2, 8, 4, 6))])
def test_exported_shuffles_are_depth_to_space_ops(tmp_path, spatial_dims, shape):
    import onnx

    from bundle.export import compare_onnx, export_onnx

    net = torch.nn.Sequential(UnshuffleDown(spatial_dims, 2, 4), ShuffleUp(spatial_dims, 4, 2)).eval()
    path = export_onnx(net, tmp_path / "shuffles.onnx", (torch.randn(*shape),), size_divisor=2)
    # another size than the example's: the graph's shapes are dynamic
    other = (1, 2) + tuple(s + 2 for s in shape[2:])
    assert compare_onnx(net, path, (torch.randn(*other),)) < 1e-5
    nodes = onnx.load(str(path)).graph.node
    ops = [n.op_type for n in nodes]
    assert ops.count("SpaceToDepth") == 1 and ops.count("DepthToSpace") == 1
    ranks = [len(a.ints) for n in nodes if n.op_type == "Transpose" for a in n.attribute]
    assert len(ranks) == 2 * (spatial_dims - 2) and max(ranks, default=0) <= 4


def test_space_to_depth_matches_pixel_unshuffle():
    from bundle.networks.blocks import space_to_depth

    x = torch.randn(3, 6, 9)
    assert torch.equal(space_to_depth(x, 3), pixelunshuffle(x.unsqueeze(1), 2, 3))


def test_pixel_unshuffle_rejects_indivisible():
    with pytest.raises(ValueError, match="not divisible by 2"):
        pixel_unshuffle(torch.zeros(1, 1, 5, 4), 2, 2)


def test_spatial_shift_moves_groups_with_zero_fill():
    shift = SpatialShift(2, 5)  # 4 shifted groups of one channel, one unshifted
    x = torch.arange(1.0, 10.0).reshape(1, 1, 3, 3).repeat(1, 5, 1, 1)
    y = shift(x)
    img = x[0, 0]
    assert torch.equal(y[0, 0, 1:], img[:-1]) and not y[0, 0, 0].any()  # +1 along H
    assert torch.equal(y[0, 1, :-1], img[1:]) and not y[0, 1, -1].any()  # -1 along H
    assert torch.equal(y[0, 2, :, 1:], img[:, :-1]) and not y[0, 2, :, 0].any()  # +1 along W
    assert torch.equal(y[0, 3, :, :-1], img[:, 1:]) and not y[0, 3, :, -1].any()  # -1 along W
    assert torch.equal(y[0, 4], img)


def test_face_neighbours_stacks_each_channel_at_the_voxel_and_its_neighbours():
    x = torch.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    x = torch.cat([x, -x], dim=1)  # two channels: each is copied, not split into groups
    y = face_neighbours(x, 2)
    assert y.shape == (1, 2 * 5, 3, 3)
    img = x[0]
    assert torch.equal(y[0, 0:2], img)
    assert torch.equal(y[0, 2:4, 1:], img[:, :-1]) and not y[0, 2:4, 0].any()  # +1 along H: p holds p - 1
    assert torch.equal(y[0, 4:6, :-1], img[:, 1:]) and not y[0, 4:6, -1].any()  # -1 along H: p holds p + 1
    assert torch.equal(y[0, 6:8, :, 1:], img[:, :, :-1]) and not y[0, 6:8, :, 0].any()
    assert torch.equal(y[0, 8:10, :, :-1], img[:, :, 1:]) and not y[0, 8:10, :, -1].any()
    assert face_neighbours(torch.rand(2, 1, 4, 5, 6), 3).shape == (2, 7, 4, 5, 6)


@pytest.mark.parametrize("spatial_dims,shape", [(2, (2, 3, 5, 6)), (3, (1, 3, 4, 5, 6))])
def test_sum_face_neighbours_is_a_convolution_of_face_neighbours_without_the_wide_input(spatial_dims, shape):
    torch.manual_seed(0)
    h, out, points = torch.randn(*shape), 2, 2 * spatial_dims + 1
    wide = torch.randn(out, shape[1] * points)  # a 1x1 convolution of face_neighbours(h): C * points -> out
    expected = torch.einsum("oc,bc...->bo...", wide, face_neighbours(h, spatial_dims))
    # the same weights as one group of `out` channels per stencil point, each applied to h where it is computed
    grouped = torch.cat([wide[:, k * shape[1] : (k + 1) * shape[1]] for k in range(points)], dim=0)
    y = sum_face_neighbours(torch.einsum("oc,bc...->bo...", grouped, h), spatial_dims)
    assert y.shape == (shape[0], out, *shape[2:])
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


def test_spatial_shift_3d_keeps_shape_and_needs_enough_channels():
    assert SpatialShift(3, 16)(torch.rand(2, 16, 4, 5, 6)).shape == (2, 16, 4, 5, 6)
    with pytest.raises(ValueError, match="at least 7 channels"):
        SpatialShift(3, 6)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_down_and_up_shapes(spatial_dims):
    x = torch.rand(2, 4, *([8] * spatial_dims))
    down = UnshuffleDown(spatial_dims, 4, 6)(x)
    assert down.shape == (2, 6, *([4] * spatial_dims))
    assert ShuffleUp(spatial_dims, 6, 4)(down).shape == x.shape


def test_global_context_is_identity_at_init_and_global_after():
    block = GlobalContext(2, 4)
    x = torch.rand(1, 4, 8, 8)
    assert torch.equal(block(x), x)
    torch.nn.init.normal_(block.conv2.weight)
    x2 = x.clone()
    x2[0, :, 7, 7] += 5.0  # change a single far-away position
    assert not torch.allclose(block(x)[0, :, 0, 0] - x[0, :, 0, 0], block(x2)[0, :, 0, 0] - x2[0, :, 0, 0])


def test_film_modulates_per_channel():
    torch.manual_seed(0)
    film = FiLM(3, 4, 6)
    x = torch.rand(2, 4, 2, 3, 2)
    c = torch.randn(2, 6)
    assert torch.equal(film(x, c), x)  # zero-initialised: the identity
    torch.nn.init.normal_(film.proj.weight)
    gamma, beta = film.proj(c).chunk(2, dim=1)
    expected = x * (1 + gamma[:, :, None, None, None]) + beta[:, :, None, None, None]
    torch.testing.assert_close(film(x, c), expected)
    with pytest.raises(ValueError, match="conditioning vector"):
        film(x, None)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_conditioned_pointwise_maps_each_item_by_its_own_matrix(spatial_dims):
    torch.manual_seed(0)
    layer = ConditionedPointwise(spatial_dims, 5, 3, 6)
    x = torch.randn(2, 5, *([4] * spatial_dims))
    c = torch.randn(2, 6)
    conv = torch.nn.functional.conv2d if spatial_dims == 2 else torch.nn.functional.conv3d
    kernel = [1] * spatial_dims
    # zero-initialised projection: one plain kernel-size-1 convolution for every item
    torch.testing.assert_close(layer(x, c), conv(x, layer.weight.reshape(3, 5, *kernel)))
    torch.nn.init.normal_(layer.proj.weight)
    weights = layer.weight + layer.proj(c).reshape(2, 3, 5)
    expected = torch.cat([conv(x[i : i + 1], weights[i].reshape(3, 5, *kernel)) for i in range(2)])
    y = layer(x, c)
    torch.testing.assert_close(y, expected)
    assert not torch.allclose(y[0], conv(x[:1], weights[1].reshape(3, 5, *kernel))[0])  # the items differ
    y.sum().backward()
    assert layer.proj.weight.grad.abs().sum() > 0 and layer.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="conditioning vector"):
        layer(x, None)


@pytest.mark.parametrize("spatial_dims,bias", [(2, True), (3, True), (3, False)])
def test_pointwise_conv_equals_conv_in_value_and_gradient(spatial_dims, bias):
    torch.manual_seed(0)
    conv = conv1x1(spatial_dims, 5, 7, bias=bias)
    reference = (torch.nn.Conv2d if spatial_dims == 2 else torch.nn.Conv3d)(5, 7, 1, bias=bias)
    reference.load_state_dict(conv.state_dict())
    x = torch.randn(2, 5, *([6] * spatial_dims), requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    y, y_ref = conv(x), reference(x_ref)  # eager: the batched-matmul path
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    y.square().sum().backward()
    y_ref.square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(conv.weight.grad, reference.weight.grad, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), y_ref, rtol=1e-5, atol=1e-5)
        # while tracing (TorchScript, ONNX) the graph records a plain convolution, with the same values
        traced = torch.jit.trace(conv, x.detach())
        assert any(n.kind() == "aten::_convolution" for n in traced.inlined_graph.nodes())
        assert not any("bmm" in n.kind() for n in traced.inlined_graph.nodes())
        torch.testing.assert_close(traced(x), y_ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="spatial_dims"):
        conv1x1(1, 2, 2)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_bias_before_an_instance_norm_is_skipped_with_the_same_values_and_gradients(spatial_dims):
    """``norm(W x + b) = norm(W x)`` for an instance norm: the skipped bias changes neither the output nor the other
    parameters' gradients; it is frozen, so no optimiser or DistributedDataParallel waits for its gradient."""
    torch.manual_seed(0)
    block = ChannelMixBlock(spatial_dims, 14, shift=True).train()
    reference = ChannelMixBlock(spatial_dims, 14, shift=True).train()
    reference.load_state_dict(block.state_dict())
    with torch.no_grad():
        for conv in (block.conv1, block.conv2):
            conv.bias.normal_()  # a bias that would show if it mattered
    reference.load_state_dict(block.state_dict())
    for conv in (reference.conv1, reference.conv2):
        conv.skip_bias = False
        conv.bias.requires_grad_(True)
    assert block.conv1.skip_bias and block.conv2.skip_bias
    assert not block.conv1.bias.requires_grad and not block.conv2.bias.requires_grad
    x = torch.randn(2, 14, *([6] * spatial_dims))
    y, y_ref = block(x), reference(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    y.square().sum().backward()
    y_ref.square().sum().backward()
    for (name, p), p_ref in zip(block.named_parameters(), reference.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-3, atol=1e-3, msg=name)
        else:
            assert p.grad is None and p_ref.grad.abs().max() < 1e-3, name  # zero in exact arithmetic
    # scripted graphs add the bias, with the same result
    block.eval()
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(block)(x), block(x), rtol=1e-4, atol=1e-4)


def test_bias_is_kept_before_a_norm_that_does_not_remove_it():
    conv = conv1x1(3, 4, 6)
    for norm in (
        torch.nn.BatchNorm3d(6),
        torch.nn.InstanceNorm3d(6, track_running_stats=True),
        torch.nn.GroupNorm(2, 6),
    ):
        skip_bias_before(conv, norm)
        assert not conv.skip_bias and conv.bias.requires_grad
    skip_bias_before(conv, torch.nn.InstanceNorm3d(6, affine=True))
    assert conv.skip_bias and not conv.bias.requires_grad
    no_bias = conv1x1(3, 4, 6, bias=False)
    skip_bias_before(no_bias, torch.nn.InstanceNorm3d(6))
    assert not no_bias.skip_bias


class _RecordOps(TorchDispatchMode):
    """The ATen ops run inside the context, with the shape of each one's first tensor argument."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, tuple]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        self.ops.append((str(func), tuple(first.shape) if first is not None else ()))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("bias", [True, False])
def test_channel_map_equals_matmul_without_copying_the_batch(bias):
    torch.manual_seed(0)
    weight = torch.randn(6, 5, requires_grad=True)
    b = torch.randn(6, requires_grad=True) if bias else None
    x = torch.randn(3, 5, 40, requires_grad=True)
    expected = weight @ x + (b[:, None] if bias else 0)
    with _RecordOps() as record:
        y = channel_map(weight, x, b)
        y.square().sum().backward()
    torch.testing.assert_close(y, expected)
    grads = [t.grad.clone() for t in (weight, x) + ((b,) if bias else ())]
    for t in (weight, x) + ((b,) if bias else ()):
        t.grad = None
    expected.square().sum().backward()
    for g, t in zip(grads, (weight, x) + ((b,) if bias else ())):
        torch.testing.assert_close(g, t.grad)
    # matmul of a matrix and a batch copies the batch transposed; the expanded batched product copies nothing that
    # is as large as the input or the output
    large = [op for op, shape in record.ops if ("copy" in op or "clone" in op) and torch.Size(shape).numel() >= 120]
    assert not large, large


@pytest.mark.parametrize("spatial_dims,affine", [(2, True), (3, True), (3, False)])
def test_instance_norm_equals_torchs_in_values_gradients_and_parameters(spatial_dims, affine):
    torch.manual_seed(0)
    reference = (torch.nn.InstanceNorm2d if spatial_dims == 2 else torch.nn.InstanceNorm3d)(5, affine=affine)
    norm = InstanceNorm(5, affine=affine)
    if affine:
        with torch.no_grad():
            reference.weight.normal_()
            reference.bias.normal_()
    assert norm.load_state_dict(reference.state_dict()) is not None  # the same keys: checkpoints load either way
    x = 3 * torch.randn(2, 5, *([6] * spatial_dims)) + 1
    x.requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    y, y_ref = norm(x), reference(x_ref)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    (y * torch.arange(y.numel()).reshape(y.shape).sin()).sum().backward()
    (y_ref * torch.arange(y.numel()).reshape(y.shape).sin()).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-4)
    if affine:
        torch.testing.assert_close(norm.weight.grad, reference.weight.grad, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(norm.bias.grad, reference.bias.grad, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(norm)(x), y_ref, rtol=1e-4, atol=1e-4)


def test_instance_norm_exports_as_instance_normalization(tmp_path):
    norm = InstanceNorm(4).eval()
    path = tmp_path / "norm.onnx"
    torch.onnx.export(norm, (torch.randn(1, 4, 4, 6, 8),), str(path), dynamo=False)
    import onnx

    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "InstanceNormalization" in ops and "GroupNormalization" not in ops, ops


def test_norm_layer_builds_instance_norms_as_group_norms_and_leaves_the_others():
    for norm, spatial_dims in ((("instance", {"affine": True}), 3), ("instance", 2)):
        layer = norm_layer(norm, spatial_dims, 6)
        assert isinstance(layer, InstanceNorm) and layer.num_groups == 6
        assert layer.affine == (norm != "instance")
    assert isinstance(norm_layer(("instance", {"track_running_stats": True}), 3, 6), torch.nn.InstanceNorm3d)
    assert isinstance(norm_layer("batch", 3, 6), torch.nn.BatchNorm3d)
    conv = conv1x1(3, 4, 6)
    skip_bias_before(conv, norm_layer(("instance", {"affine": True}), 3, 6))
    assert conv.skip_bias


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_a_mix_block_trains_without_full_size_copies(spatial_dims):
    """The block's norms and activations (in place) and its pointwise maps copy no tensor as large as the input in
    a forward and backward pass: ``instance_norm``'s view under an in-place activation made autograd copy the whole
    tensor four times in the backward pass (``CopySlices``)."""
    torch.manual_seed(0)
    block = ChannelMixBlock(spatial_dims, 14, shift=False).train()
    assert block.act1.inplace
    x = torch.randn(2, 14, *([6] * spatial_dims), requires_grad=True)
    with _RecordOps() as record:
        block(x).square().sum().backward()
    copies = [(op, shape) for op, shape in record.ops if ("copy_" in op or "clone" in op) and shape]
    copies = [c for c in copies if torch.Size(c[1]).numel() >= x.numel()]
    assert not copies, copies
