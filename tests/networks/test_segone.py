"""SegOne network: the 1D-channel-convolution invariant, shapes, conditioning, receptive field, config use."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from monai.bundle import ConfigParser

from bundle.networks import SegOne
from bundle.networks.blocks import ConditionedPointwise, FiLM, InstanceNorm
from bundle.networks.receptive_field import activate_zero_init, input_support

SMALL = {"features": (8, 16, 32), "encoder_blocks": 1, "decoder_blocks": 1}


def _learned_operators(net: nn.Module):
    return [(name, m) for name, m in net.named_modules() if any(p.numel() for p in m.parameters(recurse=False))]


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("conditioned", [False, True, "prompt_layers"])
def test_every_learned_operator_acts_on_channels_only(spatial_dims, conditioned):
    kwargs = {"with_timestep": True, "text_dim": 16} if conditioned else {"deep_supervision": 2}
    if conditioned == "prompt_layers":  # a shared decoder whose per-prompt part is prompt-controlled
        kwargs.update(shared_decoder=True, prompt_layers=2, decoder_inputs=[0])
    elif conditioned:
        kwargs["deep_supervision"] = 2  # the deep-supervision heads included
    net = SegOne(spatial_dims, 2, 3, **kwargs)
    # InstanceNorm: bundle's, a group norm with one channel per group (a per-channel scale and shift);
    # ConditionedPointwise: a kernel-size-1 convolution whose [C_out, C_in] matrix the prompt sets
    allowed = (nn.Conv2d, nn.Conv3d, nn.Linear, InstanceNorm, nn.InstanceNorm2d, nn.InstanceNorm3d)
    allowed += (ConditionedPointwise,)
    allowed += (nn.BatchNorm2d, nn.BatchNorm3d)
    convs = 0
    for name, module in _learned_operators(net):
        assert isinstance(module, allowed), f"{name}: {type(module).__name__} is not a channel-only operator"
        if isinstance(module, (nn.Conv2d, nn.Conv3d)):
            convs += 1
            assert all(k == 1 for k in module.kernel_size), f"{name}: kernel {module.kernel_size}"
            assert all(s == 1 for s in module.stride) and all(d == 1 for d in module.dilation), name
            assert module.groups == 1, name
        if isinstance(module, nn.Linear):
            # Linear layers may only map conditioning vectors (timestep/text), never image features.
            assert (
                name.startswith("cond_embed") or name.endswith(".proj") and ("film" in name or "prompt" in name)
            ), name
        if isinstance(module, ConditionedPointwise):
            convs += 1
            assert module.weight.dim() == 2, f"{name}: a [C_out, C_in] matrix, no spatial extent"
        for pname, p in module.named_parameters(recurse=False):
            assert all(s == 1 for s in p.shape[2:]), f"{name}.{pname} has spatial extent {tuple(p.shape)}"
    assert convs > 10
    for module in net.modules():
        assert not isinstance(module, (nn.ConvTranspose2d, nn.ConvTranspose3d, nn.MultiheadAttention, nn.Unfold))


@pytest.mark.parametrize(
    "spatial_dims,in_channels,out_channels,shape",
    [(2, 1, 2, (64, 48)), (2, 3, 5, (32, 32)), (3, 1, 3, (32, 48, 16)), (3, 2, 1, (16, 16, 32))],
)
@pytest.mark.parametrize("conditioned", [False, True])
def test_output_shape(spatial_dims, in_channels, out_channels, shape, conditioned):
    kwargs = {"with_timestep": True, "text_dim": 12} if conditioned else {}
    net = SegOne(spatial_dims, in_channels, out_channels, features=(8, 16, 24, 32, 48), **kwargs).eval()
    x = torch.rand(2, in_channels, *shape)
    extra = (torch.tensor([1, 900]), torch.randn(2, 12)) if conditioned else ()
    with torch.no_grad():
        y = net(x, *extra)
    assert y.shape == (2, out_channels, *shape)
    assert torch.isfinite(y).all()


def test_default_3d_config_on_hippocampus_patch():
    net = SegOne(spatial_dims=3, in_channels=1, out_channels=3).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 1, 48, 64, 48)).shape == (1, 3, 48, 64, 48)
    assert net.size_divisor == 16


@pytest.mark.parametrize("spatial_dims,shape", [(2, (32, 64)), (3, (16, 32, 16))])
def test_stem_scale_keeps_full_resolution_output_without_full_resolution_layers(spatial_dims, shape):
    net = SegOne(spatial_dims, 2, 3, features=(8, 16, 32), stem_scale=2, with_timestep=True, text_dim=8).eval()
    assert net.size_divisor == 8
    x = torch.rand(2, 2, *shape)
    seen = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[2:])))
        for m in net.modules()
        if isinstance(m, (nn.Conv2d, nn.Conv3d))
    ]
    with torch.no_grad():
        y = net(x, torch.tensor([3, 500]), torch.randn(2, 8))
    for h in hooks:
        h.remove()
    assert y.shape == (2, 3, *shape)
    half = tuple(s // 2 for s in shape)
    assert max(seen, key=lambda s: s[0]) == half  # no kernel-size-1 convolution ran at full resolution
    # each voxel of a 2^D block gets its own output value: the head is a pixel-shuffle, not a nearest upsampling
    assert not torch.allclose(
        y[..., 0::2, 0::2] if spatial_dims == 2 else y[..., 0::2, 0::2, 0::2],
        y[..., 1::2, 1::2] if spatial_dims == 2 else y[..., 1::2, 1::2, 1::2],
    )
    with pytest.raises(ValueError, match="stem_scale 2 needs every spatial size to be a multiple of 8"):
        net(torch.rand(1, 2, *([12] * spatial_dims)), torch.tensor([1]), torch.randn(1, 8))
    with pytest.raises(ValueError, match="stem_scale"):
        SegOne(spatial_dims, 1, 1, stem_scale=0)


def test_refine_head_is_the_only_full_resolution_work_and_sees_each_voxels_input():
    net = SegOne(3, 2, 1, features=(8, 16, 32), stem_scale=2, refine_channels=4, with_timestep=True, text_dim=8)
    net = activate_zero_init(net).eval()
    full = []
    hooks = [
        m.register_forward_hook(
            lambda m, i, o: full.append((m.in_channels, m.out_channels)) if i[0].shape[2:] == (16, 16, 16) else None
        )
        for m in net.modules()
        if isinstance(m, nn.Conv3d)
    ]
    x = torch.rand(1, 2, 16, 16, 16)
    t, c = torch.tensor([5]), torch.randn(1, 8)
    decoded = []
    net.decoder[-1].register_forward_hook(lambda m, i, o: decoded.append(o))
    with torch.no_grad():
        y = net(x, t, c)
        assert full == []  # eager: the refinement's maps run folded at the low resolution (refine_folded)
        in_order = net.head.refine_at_full_resolution(decoded[0], x)  # what TorchScript and traces run
    for h in hooks:
        h.remove()
    assert y.shape == (1, 1, 16, 16, 16)
    assert full == [(4 + 2, 4), (4, 1)]  # the two 1x1 convolutions of the refinement, on 6 and 4 channels
    torch.testing.assert_close(in_order, y, rtol=1e-5, atol=1e-5)
    # the raw input takes part in the full-resolution mixing: cut that path and the output changes
    with torch.no_grad():
        net.head.mix.weight[:, 4:] = 0
        assert not torch.allclose(net(x, t, c), y)


def test_refine_neighbours_lets_a_voxel_see_its_face_neighbours_input_and_no_further():
    net = SegOne(3, 2, 1, features=(8, 16, 32), stem_scale=2, refine_channels=4, refine_inputs=[1])
    near = SegOne(
        3, 2, 1, features=(8, 16, 32), stem_scale=2, refine_channels=4, refine_inputs=[1], refine_neighbours=True
    )
    assert near.head.mix.in_channels == 4 + 7 and net.head.mix.in_channels == 4 + 1
    # the head alone, with the decoder's features fixed: which input voxels reach output voxel p
    p = (5, 6, 9)
    for head_net, expected in [
        (net, {p}),
        (near, {p, (4, 6, 9), (6, 6, 9), (5, 5, 9), (5, 7, 9), (5, 6, 8), (5, 6, 10)}),
    ]:
        head_net = activate_zero_init(head_net).eval()
        features = torch.randn(1, 8, 8, 8, 8)
        x = torch.rand(1, 2, 16, 16, 16, requires_grad=True)
        with torch.enable_grad():
            head_net.head(features, x)[0, 0][p].backward()
        seen = {tuple(int(i) for i in v) for v in x.grad[0, 1].nonzero()}
        assert seen == expected
        assert not x.grad[0, 0].any()  # the noisy-mask channel stays out (refine_inputs)


def test_refine_hidden_neighbours_lets_a_voxel_see_the_neighbouring_blocks_features():
    """Without it an output voxel reads only its own 2x2x2 block's decoder features; with it, the features of the
    blocks that hold its face neighbours too, and the input at those neighbours."""
    net = SegOne(3, 2, 1, features=(8, 16, 32), stem_scale=2, refine_channels=4, refine_inputs=[1])
    near = SegOne(
        3, 2, 1, features=(8, 16, 32), stem_scale=2, refine_channels=4, refine_inputs=[1], refine_hidden_neighbours=True
    )
    assert near.head.out.out_channels == 7 and net.head.out.out_channels == 1  # one group per stencil point
    p = (5, 6, 9)  # in block (2, 3, 4); its neighbours (6, 6, 9), (5, 5, 9), (5, 6, 10) lie in three other blocks
    neighbours = {(4, 6, 9), (6, 6, 9), (5, 5, 9), (5, 7, 9), (5, 6, 8), (5, 6, 10)}
    for head_net, blocks, inputs in [
        (net, {(2, 3, 4)}, {p}),
        (near, {(2, 3, 4), (3, 3, 4), (2, 2, 4), (2, 3, 5)}, {p} | neighbours),
    ]:
        head_net = activate_zero_init(head_net).eval()
        features = torch.randn(1, 8, 8, 8, 8, requires_grad=True)
        x = torch.rand(1, 2, 16, 16, 16, requires_grad=True)
        with torch.enable_grad():
            head_net.head(features, x)[0, 0][p].backward()
        assert {tuple(int(i) for i in v) for v in features.grad[0].abs().sum(0).nonzero()} == blocks
        assert {tuple(int(i) for i in v) for v in x.grad[0, 1].nonzero()} == inputs
        assert not x.grad[0, 0].any()  # the noisy-mask channel stays out (refine_inputs)


@pytest.mark.parametrize("neighbours", ["refine_neighbours", "refine_hidden_neighbours"])
def test_refine_neighbours_without_the_refinement_is_refused(neighbours):
    with pytest.raises(ValueError, match=f"{neighbours} needs the refinement head"):
        SegOne(3, 2, 1, features=(8, 16, 32), stem_scale=2, refine_channels=0, **{neighbours: True})
    with pytest.raises(ValueError, match=f"{neighbours} needs the refinement head"):
        SegOne(3, 2, 1, features=(8, 16, 32), stem_scale=1, refine_channels=4, **{neighbours: True})


@pytest.mark.parametrize("refine_neighbours", [False, True])
@pytest.mark.parametrize("spatial_dims,shape", [(2, (16, 24)), (3, (16, 8, 24))])
def test_refinement_at_the_low_resolution_equals_the_full_resolution_one(spatial_dims, shape, refine_neighbours):
    """Exported graphs run the refinement at the low resolution, one batch item per block offset
    (``refine_by_offset``); eager runs fold its maps (``refine_folded``), the input's part once for ``K`` prompts;
    traces and TorchScript keep the full-resolution order. All give the same values."""
    net = SegOne(
        spatial_dims,
        2,
        1,
        features=(8, 16, 32),
        stem_scale=2,
        refine_channels=4,
        refine_inputs=[1],
        refine_neighbours=refine_neighbours,
    )
    net = activate_zero_init(net).eval()
    with torch.no_grad():
        for weight in (net.head.proj.bias, net.head.mix.bias, net.head.out.bias):
            weight.normal_()  # no zero biases: each one's place in the folding counts
    x = torch.randn(2, 2, *shape)
    decoded = torch.randn(6, 8, *[s // 2 for s in shape])  # three prompts per input
    head = net.head
    with torch.no_grad():
        full = head.refine_at_full_resolution(decoded, x.repeat_interleave(3, 0))
        torch.testing.assert_close(torch.jit.script(head)(decoded, x, 3), full, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(head.refine_folded(decoded, x, 3), full, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(head(decoded, x, 3), full, rtol=1e-5, atol=1e-5)
        by_offset = head.refine_by_offset(head.proj(decoded), x.repeat_interleave(3, 0))
        torch.testing.assert_close(by_offset, full, rtol=1e-5, atol=1e-5)


def test_stem_scale_pyramid_alone_sees_its_block_and_the_default_sees_the_whole_patch():
    aligned = activate_zero_init(
        SegOne(3, 1, 1, features=(8, 16, 32), norm=RF_NORM, spatial_shift=False, global_context=False, stem_scale=2)
    )
    support = input_support(aligned, (16, 16, 16), (3, 3, 3))
    expected = torch.zeros_like(support)
    expected[0:8, 0:8, 0:8] = True
    assert torch.equal(support, expected)
    full = activate_zero_init(
        SegOne(3, 1, 1, features=(32, 64, 128, 256), norm=RF_NORM, stem_scale=2, refine_channels=8)
    )
    for point in [(0, 0, 0), (47, 63, 47)]:
        assert input_support(full, (48, 64, 48), point).all()


def test_text_context_accepts_sequence_axis():
    net = activate_zero_init(SegOne(2, 1, 1, text_dim=8, **SMALL)).eval()
    x, e = torch.rand(1, 1, 16, 16), torch.randn(1, 8)
    with torch.no_grad():
        assert torch.equal(net(x, context=e), net(x, context=e[:, None]))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_forward_prompts_encodes_each_input_once_and_equals_forward_on_repeats(spatial_dims):
    net = activate_zero_init(SegOne(spatial_dims, 2, 1, with_timestep=True, text_dim=8, **SMALL)).eval()
    x = torch.rand(2, 2, *([16] * spatial_dims))
    t, e = torch.tensor([3, 3, 3, 900, 900, 900]), torch.randn(6, 8)
    scripted = torch.jit.script(net)
    stems = []
    net.encoder[0].register_forward_hook(lambda m, i, o: stems.append(o.shape[0]))
    with torch.no_grad():
        shared = net.forward_prompts(x, t, e, 3)
        assert stems == [2]  # one encoder pass for the two inputs, not six
        torch.testing.assert_close(shared, net(x.repeat_interleave(3, dim=0), t, e), rtol=0, atol=1e-6)
        torch.testing.assert_close(scripted.forward_prompts(x, t, e, 3), shared, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("stem_scale", [1, 2])
def test_decoder_inputs_bypass_the_encoder_and_the_image_is_encoded_once_for_its_prompts(spatial_dims, stem_scale):
    """``decoder_inputs=[0]``: the noisy-mask channel reaches the output through the finest decoder fusion only, so
    rows that differ only there share an encoder pass (``forward_shared_image``), equal to ``forward``."""
    torch.manual_seed(0)
    net = activate_zero_init(
        SegOne(spatial_dims, 2, 1, with_timestep=True, text_dim=8, stem_scale=stem_scale, decoder_inputs=[0], **SMALL)
    ).eval()
    assert (net.encoder_inputs, net.decoder_inputs) == ([1], [0])
    size = [16 * stem_scale] * spatial_dims
    image = torch.rand(2, 1, *size).repeat_interleave(3, dim=0)
    x = torch.cat([torch.randn(6, 1, *size), image], dim=1)  # three prompts' masks per image
    t, e = torch.tensor([3, 3, 3, 900, 900, 900]), torch.randn(6, 8)
    scripted = torch.jit.script(net)
    stems = []
    net.encoder[0].register_forward_hook(lambda m, i, o: stems.append(o.shape[0]))
    with torch.no_grad():
        shared = net.forward_shared_image(x, t, e, 3)
        assert stems == [2]
        torch.testing.assert_close(shared, net(x, t, e), rtol=0, atol=1e-6)
        # the mask changes the output but not the encoder's features
        other = x.clone()
        other[:, 0] = torch.randn_like(other[:, 0])
        assert not torch.allclose(net(other, t, e), shared, atol=1e-4)
        torch.testing.assert_close(net._encode(other)[-1], net._encode(x)[-1], rtol=0, atol=0)
        torch.testing.assert_close(scripted.forward_shared_image(x, t, e, 3), shared, rtol=1e-5, atol=1e-5)
        # forward_prompts (one input per image, the mask repeated) still equals forward on the repeats
        torch.testing.assert_close(net.forward_prompts(x[::3], t, e, 3), net(x[::3].repeat_interleave(3, 0), t, e))


def test_forward_shared_image_takes_a_batch_of_meta_tensors():
    """Training hands the network MONAI MetaTensors; slicing their batch would split the collated metadata."""
    from monai.data import MetaTensor
    from monai.data.utils import list_data_collate

    net = SegOne(3, 2, 1, with_timestep=True, text_dim=8, decoder_inputs=[0], **SMALL).eval()
    items = [{"image": MetaTensor(torch.rand(2, 16, 16, 16), meta={"filename_or_obj": f"c{i}.nii.gz"})} for i in (0, 1)]
    x = list_data_collate(items)["image"].repeat_interleave(2, dim=0)
    t, e = torch.tensor([999, 999, 500, 500]), torch.randn(4, 8)
    with torch.no_grad():
        torch.testing.assert_close(
            torch.as_tensor(net.forward_shared_image(x, t, e, 2)).as_subclass(torch.Tensor), net(x.as_tensor(), t, e)
        )


def test_decoder_inputs_are_checked():
    with pytest.raises(ValueError, match=r"decoder_inputs \[2\] must be channels of the 2-channel input"):
        SegOne(3, 2, 1, decoder_inputs=[2], **SMALL)
    with pytest.raises(ValueError, match="leave at least one for the encoder"):
        SegOne(3, 2, 1, decoder_inputs=[0, 1], **SMALL)
    net = SegOne(3, 2, 1, **SMALL)
    with pytest.raises(ValueError, match="forward_shared_image needs decoder_inputs"):
        net.forward_shared_image(torch.rand(2, 2, 16, 16, 16), prompts_per_image=2)
    net = SegOne(3, 2, 1, decoder_inputs=[0], **SMALL)
    with pytest.raises(ValueError, match="3 rows is not a whole number of images x 2 prompts"):
        net.forward_shared_image(torch.rand(3, 2, 16, 16, 16), prompts_per_image=2)


def test_film_starts_as_identity():
    """Zero-initialised FiLM: a fresh conditioned network computes what the unconditioned one does."""
    torch.manual_seed(0)
    plain = SegOne(2, 1, 2, **SMALL).eval()
    cond = SegOne(2, 1, 2, with_timestep=True, text_dim=8, **SMALL).eval()
    missing, unexpected = cond.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("cond_embed") or "film" in k for k in missing)
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(cond(x, torch.tensor([5]), torch.randn(1, 8)), plain(x))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_conditioning_changes_output(spatial_dims):
    net = activate_zero_init(SegOne(spatial_dims, 2, 1, with_timestep=True, text_dim=8, **SMALL)).eval()
    x = torch.rand(1, 2, *([16] * spatial_dims))
    t = torch.tensor([10])
    e1, e2 = torch.randn(1, 8), torch.randn(1, 8)
    with torch.no_grad():
        base = net(x, t, e1)
        assert not torch.allclose(base, net(x, t, e2), atol=1e-4), "text embedding has no effect"
        assert not torch.allclose(base, net(x, torch.tensor([700]), e1), atol=1e-4), "timestep has no effect"
        torch.testing.assert_close(base, net(x, t, e1))


def test_conditioned_network_requires_its_inputs():
    net = SegOne(2, 1, 1, with_timestep=True, text_dim=8, **SMALL)
    x = torch.rand(1, 1, 16, 16)
    with pytest.raises(ValueError, match="timesteps"):
        net(x, context=torch.randn(1, 8))
    with pytest.raises(ValueError, match="context"):
        net(x, timesteps=torch.tensor([1]))


def test_indivisible_size_names_the_required_multiple():
    net = SegOne(3, 1, 2)
    with pytest.raises(ValueError, match=r"multiple of 16.*\[40, 64, 48\]"):
        net(torch.rand(1, 1, 40, 64, 48))
    with pytest.raises(ValueError, match="spatial dims"):
        net(torch.rand(1, 1, 48, 64))


def test_invalid_configuration():
    with pytest.raises(ValueError, match="spatial_dims"):
        SegOne(1, 1, 1)
    with pytest.raises(ValueError, match="two levels"):
        SegOne(2, 1, 1, features=(8,))


# InstanceNorm takes statistics over the whole patch, so every output depends (weakly) on every input and a gradient
# test could not fail. Eval-mode BatchNorm is a fixed per-channel affine map: the support then shows only what the
# architecture's data movement (unshuffle, shifts, global pooling) provides.
RF_NORM = "batch"


def test_aligned_unshuffle_pyramid_sees_only_its_block():
    """Negative control: without shifts and global context an output sees exactly its aligned 2**L block."""
    net = activate_zero_init(SegOne(3, 1, 1, norm=RF_NORM, spatial_shift=False, global_context=False))
    support = input_support(net, (48, 64, 48), (15, 15, 15))
    expected = torch.zeros_like(support)
    expected[0:16, 0:16, 0:16] = True
    assert torch.equal(support, expected)


def test_shifts_cross_block_borders():
    net = activate_zero_init(SegOne(3, 1, 1, norm=RF_NORM, global_context=False))
    support = input_support(net, (48, 64, 48), (15, 15, 15))
    # the voxel diagonally across the corner of its 16^3 block, and voxels well into the neighbouring blocks
    assert support[16, 16, 16] and support[16, 15, 15] and support[15, 16, 15] and support[15, 15, 16]
    assert support[31, 15, 15] and support[15, 31, 15] and support[0, 0, 0]
    assert support.float().mean() > 0.5


def test_default_3d_receptive_field_covers_the_whole_patch():
    net = activate_zero_init(SegOne(3, 1, 3, norm=RF_NORM))
    for point in [(0, 0, 0), (24, 32, 24), (47, 63, 47)]:
        support = input_support(net, (48, 64, 48), point)
        assert support.all(), f"output {point} misses {int((~support).sum())} input voxels"


def test_default_2d_receptive_field_crosses_blocks():
    net = activate_zero_init(SegOne(2, 1, 2, norm=RF_NORM, global_context=False))
    support = input_support(net, (128, 128), (64, 64))
    assert support[63, 63] and support[32, 96] and support.float().mean() > 0.3


def test_instantiable_from_bundle_config():
    parser = ConfigParser(
        {
            "imports": ["$import bundle"],
            "network_def": {
                "_target_": "bundle.networks.SegOne",
                "spatial_dims": 3,
                "in_channels": 1,
                "out_channels": 3,
                "features": [8, 16, 32],
            },
        }
    )
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, SegOne)
    with torch.no_grad():
        assert net(torch.rand(1, 1, 16, 16, 16)).shape == (1, 3, 16, 16, 16)


@pytest.mark.parametrize("spatial_dims,shape", [(2, (32, 64)), (3, (32, 32, 64))])
def test_deep_supervision_heads_read_the_coarser_decoder_levels_and_forward_skips_them(spatial_dims, shape):
    torch.manual_seed(0)
    net = SegOne(spatial_dims, 2, 1, features=(8, 16, 32, 64), stem_scale=2, deep_supervision=2).eval()
    x = torch.rand(2, 2, *shape)
    with torch.no_grad():
        outputs = net.forward_deep(x)
        plain = net(x)
    assert [tuple(o.shape[2:]) for o in outputs] == [shape] + [tuple(s // (2 * 2**lv) for s in shape) for lv in (1, 2)]
    assert torch.equal(outputs[0], plain)
    # a head is a 1x1 convolution of its level's decoder output: changing it changes that output only
    with torch.no_grad():
        net.deep_heads[1].bias.add_(1.0)
        again = net.forward_deep(x)
    assert torch.equal(again[0], outputs[0]) and torch.equal(again[1], outputs[1])
    assert torch.allclose(again[2], outputs[2] + 1.0)
    scripted = torch.jit.script(net)
    assert torch.allclose(scripted(x), plain, atol=1e-5) and len(scripted.forward_deep(x)) == 3


def test_without_deep_supervision_the_state_dict_is_unchanged():
    keys = set(SegOne(3, 2, 1, features=(8, 16, 32)).state_dict())
    assert not any("deep_heads" in k for k in keys)
    assert set(SegOne(3, 2, 1, features=(8, 16, 32), deep_supervision=1).state_dict()) - keys == {
        "deep_heads.0.weight",
        "deep_heads.0.bias",
    }
    with pytest.raises(ValueError, match=r"deep_supervision must be in \[0, 1\] for 3 levels, got 2"):
        SegOne(3, 2, 1, features=(8, 16, 32), deep_supervision=2)


@pytest.mark.parametrize("spatial_dims,prompt_layers", [(2, 0), (3, 0), (3, 2)])
def test_shared_decoder_runs_the_unet_once_per_image_and_only_the_head_per_prompt(spatial_dims, prompt_layers):
    """``shared_decoder``: the conditioning enters after the decoder, so rows of one image share the encoder and the
    decoder (``forward_prompts``, ``forward_shared_image``), equal to ``forward`` on every row, and the prompts and
    the noisy mask still change the output; with ``prompt_layers``, through prompt-controlled layers."""
    torch.manual_seed(0)
    net = activate_zero_init(
        SegOne(spatial_dims, 2, 1, with_timestep=True, text_dim=8, stem_scale=2, refine_channels=4,
               refine_inputs=[1], decoder_inputs=[0], shared_decoder=True, prompt_layers=prompt_layers, **SMALL)
    ).eval()  # fmt: skip
    assert len(net.prompt_layers) == prompt_layers and isinstance(net.prompt_film, FiLM) == (prompt_layers == 0)
    for name, module in _learned_operators(net):
        for p in module.parameters(recurse=False):
            assert all(s == 1 for s in p.shape[2:]), f"{name} has spatial extent {tuple(p.shape)}"
    assert not any(isinstance(m, FiLM) for m in net.decoder.modules()) and not isinstance(net.latent_film, FiLM)
    size = [32] * spatial_dims
    image = torch.rand(2, 1, *size).repeat_interleave(3, dim=0)
    x = torch.cat([torch.randn(6, 1, *size), image], dim=1)  # three prompts' masks per image
    t, e = torch.tensor([3, 3, 3, 900, 900, 900]), torch.randn(6, 8)
    scripted = torch.jit.script(net)
    passes = {"encoder": [], "decoder": [], "prompt": []}
    net.encoder[0].register_forward_hook(lambda m, i, o: passes["encoder"].append(o.shape[0]))
    net.decoder[-1].register_forward_hook(lambda m, i, o: passes["decoder"].append(o.shape[0]))
    per_prompt = net.prompt_layers[-1] if prompt_layers else net.prompt_fuse
    per_prompt.register_forward_hook(lambda m, i, o: passes["prompt"].append(o.shape[0]))
    with torch.no_grad():
        shared = net.forward_shared_image(x, t, e, 3)
        assert passes == {"encoder": [2], "decoder": [2], "prompt": [6]}
        torch.testing.assert_close(shared, net(x, t, e), rtol=0, atol=1e-6)
        torch.testing.assert_close(scripted.forward_shared_image(x, t, e, 3), shared, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(net.forward_prompts(x[::3], t, e, 3), net(x[::3].repeat_interleave(3, 0), t, e))
        other_text, other_time, other_mask = e.clone(), t.clone(), x.clone()
        other_text[0], other_time[0] = torch.randn(8), 500
        other_mask[0, 0] = torch.randn_like(x[0, 0])
        for changed in (net(x, t, other_text), net(x, other_time, e), net(other_mask, t, e)):
            assert not torch.allclose(changed[0], shared[0], atol=1e-4)
            torch.testing.assert_close(changed[1:], shared[1:], rtol=0, atol=1e-6)


def test_shared_decoder_needs_conditioning_and_no_deep_supervision():
    with pytest.raises(ValueError, match="shared_decoder needs conditioning"):
        SegOne(3, 2, 1, shared_decoder=True, **SMALL)
    for bad in ({"prompt_layers": 1}, {"prompt_layers": -1, "shared_decoder": True}):
        with pytest.raises(ValueError, match="prompt_layers .* needs shared_decoder"):
            SegOne(3, 2, 1, text_dim=8, **bad, **SMALL)
    with pytest.raises(ValueError, match="deep supervision heads there could not tell prompts apart"):
        SegOne(3, 2, 1, text_dim=8, shared_decoder=True, deep_supervision=1, **SMALL)
