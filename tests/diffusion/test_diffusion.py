"""Mask diffusion: the training objective, DDIM sampling determinism, and that prompts are learnt through it."""

from __future__ import annotations

import pytest
import torch

from bundle.diffusion import (
    MaskDiffusion,
    PromptedSegmenter,
    consistency_loss,
    deep_supervision_loss,
    seeded_normal,
    soft_dice_loss,
)
from bundle.networks import SegOne
from bundle.networks.receptive_field import activate_zero_init


def _denoiser(image_channels: int = 1, text_dim: int = 4, spatial_dims: int = 2) -> SegOne:
    return SegOne(
        spatial_dims, 1 + image_channels, 1, features=(8, 16, 32), encoder_blocks=1, decoder_blocks=1,
        with_timestep=True, text_dim=text_dim,
    )  # fmt: skip


def test_soft_dice_loss():
    t = torch.zeros(2, 1, 4, 4)
    t[:, :, :2] = 1
    assert soft_dice_loss(t, t) == pytest.approx(0.0)
    assert soft_dice_loss(1 - t, t) > 0.9
    empty = torch.zeros(1, 1, 4, 4)
    assert soft_dice_loss(empty, empty) == pytest.approx(0.0)  # absent prompt answered with an empty mask


def test_consistency_loss_kinds_and_trust_weights():
    prob, teacher = torch.full((2, 1, 4, 4), 0.25), torch.full((2, 1, 4, 4), 0.75)
    assert consistency_loss(prob, teacher, kind="l1") == pytest.approx(0.5)
    half = torch.full((1, 1, 4, 4), 0.5)
    assert consistency_loss(half, torch.ones_like(half), kind="bce") == pytest.approx(
        float(torch.log(torch.tensor(2.0)))
    )
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1
    assert consistency_loss(mask, mask, kind="dice") == pytest.approx(0.0)
    assert consistency_loss(mask, 1 - mask, kind="dice") > 0.9
    # the teacher disagrees only where it is not trusted: no loss, whatever the kind
    weight = torch.ones(1, 1, 4, 4)
    weight[..., 2:, :] = 0
    student = mask.clone()
    disagreeing = mask.clone()
    disagreeing[..., 2:, :] = 1
    for kind in ("l1", "dice"):
        assert consistency_loss(student, disagreeing, weight, kind) == pytest.approx(0.0, abs=1e-6)
        assert consistency_loss(student, disagreeing, None, kind) > 0.1
    for kind in ("l1", "dice", "bce"):
        assert consistency_loss(student, 1 - student, torch.zeros_like(weight), kind) == 0.0  # no opinion anywhere
    with pytest.raises(ValueError, match="'mse' is not a valid value"):
        consistency_loss(prob, teacher, kind="mse")
    with pytest.raises(ValueError, match="'mse' is not a valid value"):
        MaskDiffusion(_denoiser(), consistency_loss="mse")


@pytest.mark.parametrize("kind", ["l1", "dice", "bce"])
def test_consistency_term_enters_the_loss_with_its_weight(kind):
    torch.manual_seed(0)
    model = MaskDiffusion(_denoiser(), consistency_weight=0.5, consistency_loss=kind)
    image, target = torch.rand(2, 1, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float()
    context, teacher = torch.randn(2, 4), torch.rand(2, 1, 16, 16)
    out = model.loss(image, target, context, generator=torch.Generator().manual_seed(1), teacher=teacher)
    expected = consistency_loss(out["pred_mask"], teacher, None, kind)
    torch.testing.assert_close(out["consistency"], expected)
    torch.testing.assert_close(out["loss"].detach(), out["l1"] + out["dice"] + 0.5 * expected)


def test_unlabelled_samples_train_through_the_teacher_only():
    """A sample marked unsupervised adds nothing to the L1 and Dice terms, whatever its (pseudo-)target."""
    torch.manual_seed(0)
    model = MaskDiffusion(_denoiser(), consistency_weight=1.0)
    image, target = torch.rand(2, 1, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float()
    context, teacher = torch.randn(2, 4), torch.rand(2, 1, 16, 16)
    other = target.clone()
    other[1] = 1 - other[1]
    t = torch.tensor([300, 600])
    kwargs = {"timesteps": t, "teacher": teacher}
    mixed = torch.tensor([1.0, 0.0])
    a = model.loss(image, target, context, generator=torch.Generator().manual_seed(1), supervised=mixed, **kwargs)
    b = model.loss(image, other, context, generator=torch.Generator().manual_seed(1), supervised=mixed, **kwargs)
    torch.testing.assert_close(a["l1"], b["l1"])  # the unlabelled sample's target is not a label
    torch.testing.assert_close(a["dice"], b["dice"])
    full = model.loss(image, other, context, generator=torch.Generator().manual_seed(1), **kwargs)
    assert not torch.isclose(full["dice"], b["dice"])  # ... while supervised, it would be
    # a batch of unlabelled cases: only the teacher term, and it still reaches the denoiser's weights
    none = model.loss(
        image, target, context, generator=torch.Generator().manual_seed(1), supervised=torch.zeros(2), **kwargs
    )
    assert none["l1"] == 0 and none["dice"] == 0 and none["consistency"] > 0
    torch.testing.assert_close(none["loss"].detach(), none["consistency"])
    model.zero_grad()
    none["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.denoiser.parameters())


@pytest.mark.parametrize("prediction_type", ["sample", "epsilon", "logits"])
def test_loss_is_finite_deterministic_and_trains_the_denoiser(prediction_type):
    torch.manual_seed(0)
    model = MaskDiffusion(_denoiser(), prediction_type=prediction_type)
    image, target = torch.rand(2, 1, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float()
    context = torch.randn(2, 4)
    out = model.loss(image, target, context, generator=torch.Generator().manual_seed(1))
    again = model.loss(image, target, context, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out["loss"], again["loss"])
    assert torch.isfinite(out["loss"]) and out["pred_mask"].shape == target.shape
    assert 0 <= out["pred_mask"].min() and out["pred_mask"].max() <= 1
    out["loss"].backward()
    assert all(p.grad is not None for p in model.denoiser.parameters() if p.requires_grad)


def test_epsilon_prediction_implies_the_clean_mask():
    model = MaskDiffusion(_denoiser(), prediction_type="epsilon")
    x0 = (torch.rand(3, 1, 8, 8) > 0.5).float() * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 500, 999])
    noisy = model.train_scheduler.add_noise(x0, noise, t)
    torch.testing.assert_close(model._clean_from_output(noise, noisy, t), x0, atol=1e-3, rtol=1e-3)


def test_logits_prediction_is_a_likelihood_on_the_raw_output():
    """For ``"logits"`` the clean mask is tanh(z / 2), the BCE term is the logits' BCE, and DDIM steps on tanh(z / 2)."""
    torch.manual_seed(0)
    model = MaskDiffusion(_denoiser(), prediction_type="logits", l1_weight=0.5, dice_weight=0.25, bce_weight=2.0)
    image, target = torch.rand(2, 1, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float()
    context, t = torch.randn(2, 4), torch.tensor([999, 400])
    out = model.loss(image, target, context, timesteps=t, generator=torch.Generator().manual_seed(1))
    # the same noise, the raw output by hand
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(target.shape, generator=gen)
    noisy = model.train_scheduler.add_noise(target * 2 - 1, noise, t)
    z = model.denoiser(torch.cat([noisy, image], 1), t, context)
    prob = torch.sigmoid(z)
    torch.testing.assert_close(out["pred_mask"], prob)
    torch.testing.assert_close(out["bce"], torch.nn.functional.binary_cross_entropy_with_logits(z, target).detach())
    torch.testing.assert_close(out["l1"], ((2 * prob - 1) - (2 * target - 1)).abs().mean().detach())
    torch.testing.assert_close(out["loss"].detach(), 0.5 * out["l1"] + 0.25 * out["dice"] + 2.0 * out["bce"])
    # one DDIM step from t = T - 1 with the trailing grid lands on tanh(z / 2), up to the (tiny) remaining noise
    model.eval()
    x = seeded_normal(image[:1, :1], 0).expand(2, 1, 16, 16)
    with torch.no_grad():
        z1 = model.denoiser(torch.cat([x, image], 1), torch.tensor([999, 999]), context)
        sampled, _ = model.sample(image, context, num_inference_steps=1, seed=0)
    torch.testing.assert_close(sampled, torch.sigmoid(z1), atol=2e-2, rtol=0)
    assert ((sampled > 0.5) == (z1 > 0)).float().mean() > 0.99


def test_bce_term_is_off_by_default_and_counts_labelled_samples_only():
    torch.manual_seed(0)
    image, target = torch.rand(2, 1, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float()
    context, t = torch.randn(2, 4), torch.tensor([999, 600])
    plain = MaskDiffusion(_denoiser())
    out = plain.loss(image, target, context, timesteps=t, generator=torch.Generator().manual_seed(1))
    assert out["bce"] == 0
    torch.testing.assert_close(out["loss"].detach(), out["l1"] + out["dice"])
    model = MaskDiffusion(_denoiser(), prediction_type="logits", bce_weight=1.0)
    other = target.clone()
    other[1] = 1 - other[1]
    kwargs = {"timesteps": t, "supervised": torch.tensor([1.0, 0.0])}
    a = model.loss(image, target, context, generator=torch.Generator().manual_seed(1), **kwargs)
    b = model.loss(image, other, context, generator=torch.Generator().manual_seed(1), **kwargs)
    assert a["bce"] > 0 and a["bce"] == b["bce"]


def test_deep_supervision_loss_weights_heads_against_averaged_targets():
    target = torch.zeros(1, 1, 8, 8)
    target[0, 0, :2, :2] = 1.0  # one whole 2x2 block; a quarter of one 4x4 block
    fine, coarse = torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 2, 2)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    t2 = torch.zeros(1, 1, 4, 4)
    t2[0, 0, 0, 0] = 1.0
    t4 = torch.zeros(1, 1, 2, 2)
    t4[0, 0, 0, 0] = 0.25
    by_hand = [bce(z, t) + soft_dice_loss(torch.sigmoid(z), t) for z, t in ((fine, t2), (coarse, t4))]
    expected = (0.5 * by_hand[0] + 0.25 * by_hand[1]) / 0.75
    torch.testing.assert_close(deep_supervision_loss([fine, coarse], target), expected)
    assert deep_supervision_loss([], target) == 0


def test_deep_supervision_term_enters_the_loss_with_its_weight():
    torch.manual_seed(0)
    denoiser = SegOne(2, 2, 1, features=(8, 16, 32, 64), with_timestep=True, text_dim=4, deep_supervision=2)
    image, target = torch.rand(2, 1, 32, 32), (torch.rand(2, 1, 32, 32) > 0.5).float()
    context, t = torch.randn(2, 4), torch.tensor([999, 300])
    kwargs = {"timesteps": t}
    plain = MaskDiffusion(denoiser, prediction_type="logits", bce_weight=1.0)
    deep = MaskDiffusion(denoiser, prediction_type="logits", bce_weight=1.0, deep_supervision_weight=0.5)
    a = plain.loss(image, target, context, generator=torch.Generator().manual_seed(1), **kwargs)
    b = deep.loss(image, target, context, generator=torch.Generator().manual_seed(1), **kwargs)
    assert a["deep_supervision"] == 0 and b["deep_supervision"] > 0
    torch.testing.assert_close(b["bce"], a["bce"])  # the main output is the same
    torch.testing.assert_close(b["loss"].detach(), a["loss"].detach() + 0.5 * b["deep_supervision"])
    b["loss"].backward()
    assert denoiser.deep_heads[1].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="deep-supervision heads; got 0.5 with 'sample'"):
        MaskDiffusion(denoiser, prediction_type="sample", deep_supervision_weight=0.5)
    with pytest.raises(ValueError, match="and 0 heads"):
        MaskDiffusion(_denoiser(), prediction_type="logits", deep_supervision_weight=0.5)


def test_every_prompt_of_an_image_in_one_step_with_the_classes_competing():
    """``[B, K, E]`` context: the B * K pairs equal one-prompt calls at the image's timestep; the multi-class term is
    the cross-entropy over [0, z_1, ..., z_K] against the label, and it is what makes the classes compete."""
    torch.manual_seed(0)
    model = MaskDiffusion(_denoiser(), prediction_type="logits", l1_weight=0.0, bce_weight=1.0, competition_weight=1.0)
    image = torch.rand(2, 1, 16, 16)
    label = torch.randint(0, 3, (2, 16, 16))
    target = torch.stack([(label == c).float() for c in (1, 2)], 1)  # [2, 2, 16, 16]
    context = torch.randn(2, 2, 4)
    t = torch.tensor([999, 500])
    out = model.loss(image, target, context, timesteps=t, generator=torch.Generator().manual_seed(1))
    assert out["pred_mask"].shape == target.shape
    # the same pairs, flattened by hand, with the noise drawn in the same order
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(4, 1, 16, 16, generator=gen)
    pairs_t = t.repeat_interleave(2)
    noisy = model.train_scheduler.add_noise(target.reshape(4, 1, 16, 16) * 2 - 1, noise, pairs_t)
    z = model.denoiser(torch.cat([noisy, image.repeat_interleave(2, 0)], 1), pairs_t, context.reshape(4, 4))
    torch.testing.assert_close(out["pred_mask"], torch.sigmoid(z).reshape(2, 2, 16, 16))
    full = torch.cat([torch.zeros(2, 1, 16, 16), z.reshape(2, 2, 16, 16)], 1)
    expected = torch.nn.functional.cross_entropy(full, label)
    torch.testing.assert_close(out["competition"], expected.detach())
    torch.testing.assert_close(out["loss"].detach(), out["dice"] + out["bce"] + out["competition"])
    # one prompt per image: no multi-class term
    single = model.loss(image, target[:, :1], context[:, 0], timesteps=t)
    assert single["competition"] == 0
    with pytest.raises(ValueError, match="target must be"):
        model.loss(image, target[:, :1], context, timesteps=t)
    with pytest.raises(ValueError, match="teacher term needs one prompt"):
        model.loss(image, target, context, teacher=torch.rand(2, 1, 16, 16))
    with pytest.raises(ValueError, match="competition_weight"):
        MaskDiffusion(_denoiser(), competition_weight=1.0)  # needs logits


class _ForwardOnly(torch.nn.Module):
    """A denoiser seen through ``forward`` alone: each (image, prompt) pair gets its own encoder pass."""

    def __init__(self, denoiser: torch.nn.Module) -> None:
        super().__init__()
        self.denoiser = denoiser

    def forward(self, x, timesteps, context):
        return self.denoiser(x, timesteps, context)


@pytest.mark.parametrize("shared_decoder", [False, True])
def test_a_denoiser_whose_encoder_skips_the_mask_encodes_each_image_once_per_training_step(shared_decoder):
    """``decoder_inputs=[0]``: every prompt of an image in one step costs one encoder pass (with ``shared_decoder``,
    one decoder pass too), with the same loss and gradients as the pairs denoised one by one; the sampler, too,
    encodes each image once at every step."""
    torch.manual_seed(0)
    denoiser = activate_zero_init(
        SegOne(2, 2, 1, features=(8, 16, 32), encoder_blocks=1, decoder_blocks=1, with_timestep=True, text_dim=4,
               decoder_inputs=[0], shared_decoder=shared_decoder)
    )  # fmt: skip
    terms = {"prediction_type": "logits", "l1_weight": 0.0, "bce_weight": 1.0, "competition_weight": 1.0}
    image = torch.rand(2, 1, 16, 16)
    label = torch.randint(0, 3, (2, 16, 16))
    target = torch.stack([(label == c).float() for c in (1, 2)], 1)
    context, t = torch.randn(2, 2, 4), torch.tensor([999, 500])
    losses, grads = [], []
    for model in (MaskDiffusion(denoiser, **terms), MaskDiffusion(_ForwardOnly(denoiser), **terms)):
        stems, decoders = [], []
        hook = denoiser.encoder[0].register_forward_hook(lambda m, i, o: stems.append(o.shape[0]))
        decoder_hook = denoiser.decoder[0].register_forward_hook(lambda m, i, o: decoders.append(o.shape[0]))
        out = model.loss(image, target, context, timesteps=t, generator=torch.Generator().manual_seed(1))
        hook.remove()
        decoder_hook.remove()
        assert stems == ([2] if not losses else [4])  # shared: one pass per image; forward only: one per pair
        assert decoders == ([2] if shared_decoder and not losses else [4])
        denoiser.zero_grad()
        out["loss"].backward()
        losses.append(out["loss"].detach())
        grads.append([p.grad.clone() for p in denoiser.parameters() if p.grad is not None])
    torch.testing.assert_close(losses[0], losses[1])
    assert len(grads[0]) == len(grads[1]) > 0
    for shared, separate in zip(*grads):
        torch.testing.assert_close(shared, separate, rtol=1e-4, atol=1e-6)
    stems, decoders = [], []
    denoiser.encoder[0].register_forward_hook(lambda m, i, o: stems.append(o.shape[0]))
    denoiser.decoder[0].register_forward_hook(lambda m, i, o: decoders.append(o.shape[0]))
    seg = PromptedSegmenter(denoiser, prompt_embeddings=torch.randn(3, 4), num_inference_steps=3).eval()
    probs = seg(image)
    assert stems == [2, 2, 2]
    assert decoders == ([2, 2, 2] if shared_decoder else [6, 6, 6])  # 2 images x 3 prompts
    torch.testing.assert_close(seg(image[1:]), probs[1:], rtol=1e-5, atol=1e-5)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="Unsupported option .v."):
        MaskDiffusion(_denoiser(), prediction_type="v")
    with pytest.raises(ValueError, match="bce_weight"):
        MaskDiffusion(_denoiser(), bce_weight=-1.0)
    model = MaskDiffusion(_denoiser())
    with pytest.raises(ValueError, match="target must be"):
        model.loss(torch.rand(1, 1, 8, 8), torch.rand(1, 2, 8, 8), torch.randn(1, 4))
    with pytest.raises(ValueError, match="num_inference_steps"):
        model.sample(torch.rand(1, 1, 8, 8), torch.randn(1, 4), num_inference_steps=0)
    with pytest.raises(ValueError, match="starting points"):
        model.sample(torch.rand(1, 1, 8, 8), torch.randn(1, 4), num_samples=2, noise=torch.randn(1, 1, 1, 8, 8))


def test_sampling_is_deterministic_per_seed_and_gives_uncertainty():
    torch.manual_seed(0)
    model = MaskDiffusion(_denoiser()).eval()
    image, context = torch.rand(2, 1, 16, 16), torch.randn(2, 4)
    a, var_a = model.sample(image, context, num_inference_steps=4, seed=3)
    b, _ = model.sample(image, context, num_inference_steps=4, seed=3)
    c, _ = model.sample(image, context, num_inference_steps=4, seed=4)
    assert a.shape == (2, 1, 16, 16) and var_a is None
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    assert 0 <= a.min() and a.max() <= 1
    mean, var = model.sample(image, context, num_inference_steps=4, seed=3, num_samples=3)
    assert var is not None and var.shape == mean.shape and (var >= 0).all() and var.max() > 0


def _two_object_batch(gen: torch.Generator, n: int, size: int = 32):
    """Images with a bright (1.0) and a dim (0.5) square; prompt 0 asks for the bright one, prompt 1 the dim one."""
    image = torch.zeros(n, 1, size, size)
    targets = torch.zeros(2, n, 1, size, size)
    for i in range(n):
        for k, value in enumerate((1.0, 0.5)):
            side = int(torch.randint(6, 11, (1,), generator=gen))
            while True:
                y, x = (int(v) for v in torch.randint(0, size - side, (2,), generator=gen))
                if not image[i, 0, y : y + side, x : x + side].any():
                    break
            image[i, 0, y : y + side, x : x + side] = value
            targets[k, i, 0, y : y + side, x : x + side] = 1
    return image + 0.05 * torch.randn(image.shape, generator=gen), targets


@pytest.mark.parametrize("prediction_type", ["sample", "logits"])
def test_prompts_are_learnt_through_diffusion(prediction_type):
    """A tiny model learns to answer two prompts on the same images; fails if conditioning or sampling is broken."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    prompts = torch.eye(4)[:2]  # two prompt embeddings
    weights = {"l1_weight": 0.0, "bce_weight": 1.0} if prediction_type == "logits" else {}
    model = MaskDiffusion(_denoiser(), prediction_type=prediction_type, **weights)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        image, targets = _two_object_batch(gen, 8)
        which = torch.randint(0, 2, (8,), generator=gen)
        target = targets[which, torch.arange(8)]
        loss = model.loss(image, target, prompts[which], generator=gen)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    image, targets = _two_object_batch(torch.Generator().manual_seed(99), 16)
    for k in range(2):
        prob, _ = model.sample(image, prompts[k].expand(16, -1), num_inference_steps=5, seed=0)
        dice = 1 - soft_dice_loss((prob > 0.5).float(), targets[k], eps=0.0)
        other = 1 - soft_dice_loss((prob > 0.5).float(), targets[1 - k], eps=0.0)
        assert dice > 0.8, f"prompt {k}: Dice {dice:.3f}"
        assert other < 0.2, f"prompt {k} segments the other object (Dice {other:.3f})"


class _NoiseOf(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return seeded_normal(x, 7)


def test_seeded_normal_is_standard_normal_and_deterministic():
    ref = torch.zeros(4, 1, 40, 50, 25)
    z = seeded_normal(ref, 0)
    assert z.shape == ref.shape and z.dtype == ref.dtype
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01
    kurtosis = float(((z - z.mean()) ** 4).mean() / z.var() ** 2)
    assert abs(kurtosis - 3) < 0.05
    flat = z.flatten()
    assert abs(float(torch.corrcoef(torch.stack([flat[:-1], flat[1:]]))[0, 1])) < 0.01, "neighbours correlated"
    torch.testing.assert_close(seeded_normal(ref, 0), z)
    assert abs(float(torch.corrcoef(torch.stack([flat, seeded_normal(ref, 1).flatten()]))[0, 1])) < 0.01
    # a function of the flat voxel index: an odd-sized tensor gets the same values as the start of a larger one
    odd = seeded_normal(torch.zeros(1, 1, 3, 5, 7), 0)
    torch.testing.assert_close(odd.flatten(), flat[: odd.numel()])


def test_seeded_normal_survives_trace_and_onnx(tmp_path):
    from bundle.export import compare_onnx, export_onnx

    x = torch.rand(1, 1, 16, 16, 16)
    traced = torch.jit.trace(_NoiseOf(), (x,))
    other = torch.rand(2, 1, 8, 24, 16)
    assert torch.equal(traced(other), seeded_normal(other, 7))
    path = export_onnx(_NoiseOf(), tmp_path / "noise.onnx", (x,), size_divisor=1)
    assert compare_onnx(_NoiseOf(), path, (other[:1],)) < 1e-5  # the ONNX batch size is the example's


def _segmenter(
    num_prompts: int = 2, decoder_inputs=(), shared_decoder: bool = False, num_inference_steps: int = 3
) -> PromptedSegmenter:
    torch.manual_seed(0)
    denoiser = activate_zero_init(
        SegOne(3, 2, 1, features=(8, 16, 32), encoder_blocks=1, decoder_blocks=1, with_timestep=True, text_dim=4,
               decoder_inputs=decoder_inputs, shared_decoder=shared_decoder)
    )  # fmt: skip
    return PromptedSegmenter(
        denoiser, prompt_embeddings=torch.randn(num_prompts, 4), num_inference_steps=num_inference_steps
    ).eval()


def test_prompted_segmenter_gives_class_probabilities():
    seg = _segmenter(2)
    x = torch.rand(2, 1, 16, 16, 32)
    y = seg(x)
    assert y.shape == (2, 3, 16, 16, 32)
    assert (y >= 0).all() and (y <= 1).all()
    torch.testing.assert_close(y.sum(1), torch.ones(2, 16, 16, 32))
    torch.testing.assert_close(seg(x), y)  # deterministic
    assert seg(x, prompt_embeddings=torch.randn(3, 4)).shape == (2, 4, 16, 16, 32)
    with pytest.raises(ValueError, match=r"\[K, E\]"):
        PromptedSegmenter(seg.denoiser, prompt_embeddings=torch.randn(4))
    with pytest.raises(ValueError, match="at least one class prompt"):
        PromptedSegmenter(seg.denoiser)
    with pytest.raises(ValueError, match="num_inference_steps"):
        PromptedSegmenter(seg.denoiser, prompt_embeddings=torch.randn(2, 4), num_inference_steps=0)


def test_prompted_segmenter_is_batch_invariant():
    seg = _segmenter(2)
    x = torch.rand(2, 1, 16, 16, 16)
    y = seg(x)
    # each image alone, each prompt alone: the same probabilities as the joint batch
    torch.testing.assert_close(seg(x[1:]), y[1:], rtol=1e-5, atol=1e-5)
    for k in range(2):
        p, _ = seg.sample(x, seg.prompt_embeddings[k : k + 1].expand(2, -1), 3, 0)
        alone = seg(x, prompt_embeddings=seg.prompt_embeddings[k : k + 1])
        torch.testing.assert_close(alone[:, 1:], p, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("steps", [1, 3])
def test_sampling_several_prompts_per_image_encodes_the_first_step_once(steps):
    seg = _segmenter(3)
    x = torch.rand(2, 1, 16, 16, 16)
    context = seg.prompt_embeddings.repeat(2, 1)  # [2 * 3, E], image-major
    batches = []
    seg.denoiser.encoder[0].register_forward_hook(lambda m, i, o: batches.append(o.shape[0]))
    shared, _ = seg.sample(x, context, steps, 0, prompts_per_image=3)
    # the first step encodes each image once; later steps see each prompt's own mask
    assert batches == [2] + [6] * (steps - 1)
    repeated, _ = seg.sample(x.repeat_interleave(3, dim=0), context, steps, 0)
    torch.testing.assert_close(shared, repeated, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="6 rows for 2 images x 2 prompts"):
        seg.sample(x, context, steps, 0, prompts_per_image=2)
    with pytest.raises(ValueError, match="prompts_per_image must be >= 1"):
        seg.sample(x, context, steps, 0, prompts_per_image=0)


def test_prompt_rows_ask_some_classes_and_keep_every_channel():
    seg = _segmenter(3)
    x = torch.rand(1, 1, 16, 16, 16)
    rows = torch.tensor([2, 0])
    y = seg(x, prompt_rows=rows)
    assert y.shape == (1, 4, 16, 16, 16) and not y[:, 2].any()  # class 2 (row 1) was not asked
    asked = seg(x, prompt_embeddings=seg.prompt_embeddings[rows])  # channels: background, row 2, row 0
    torch.testing.assert_close(y[:, [0, 3, 1]], asked)
    torch.testing.assert_close(y.sum(1), torch.ones(1, 16, 16, 16))


def test_segmenter_shares_state_with_training_network():
    torch.manual_seed(0)
    denoiser = SegOne(3, 2, 1, features=(8, 16, 32), encoder_blocks=1, decoder_blocks=1, with_timestep=True, text_dim=4)
    train_net = MaskDiffusion(denoiser, prompt_embeddings=torch.randn(2, 4))
    seg = PromptedSegmenter.sharing(train_net, num_inference_steps=2)
    assert seg.state_dict().keys() == train_net.state_dict().keys()
    fresh = PromptedSegmenter(
        SegOne(3, 2, 1, features=(8, 16, 32), encoder_blocks=1, decoder_blocks=1, with_timestep=True, text_dim=4),
        num_prompts=2,
        embed_dim=4,
    )
    fresh.load_state_dict(train_net.state_dict())
    torch.testing.assert_close(fresh.prompt_embeddings, train_net.prompt_embeddings)
    train_net.prompt_embeddings.mul_(2.0)  # an in-place load into the training network shows in the segmenter
    torch.testing.assert_close(seg.prompt_embeddings, train_net.prompt_embeddings)
    with pytest.raises(TypeError, match="inference"):
        seg.loss(torch.zeros(1, 1, 16, 16, 16), torch.zeros(1, 1, 16, 16, 16), torch.zeros(1, 4))


@pytest.mark.parametrize("decoder_inputs,shared_decoder", [((), False), ((0,), False), ((0,), True)])
def test_prompted_segmenter_traces_and_slides(tmp_path, decoder_inputs, shared_decoder):
    from monai.inferers import SlidingWindowInferer

    from bundle.export import export_torchscript

    seg = _segmenter(2, decoder_inputs, shared_decoder)
    example = (torch.rand(1, 1, 16, 16, 32),)
    traced = torch.jit.load(str(export_torchscript(seg, tmp_path / "seg.ts", trace_inputs=example)))
    other = torch.rand(2, 1, 32, 16, 16)  # another batch size and shape than the trace's
    torch.testing.assert_close(traced(other), seg(other), rtol=1e-5, atol=1e-5)
    inferer = SlidingWindowInferer(roi_size=(16, 16, 16), sw_batch_size=2, overlap=0.25, mode="gaussian")
    assert inferer(torch.rand(1, 1, 40, 24, 20), seg).shape == (1, 3, 40, 24, 20)


@pytest.mark.parametrize("decoder_inputs,shared_decoder", [((), False), ((0,), False), ((0,), True)])
def test_prompted_segmenter_exports_to_onnx(tmp_path, decoder_inputs, shared_decoder):
    from bundle.export import compare_onnx, export_onnx

    # two sampling steps still record the loop's step-to-step update; each step adds a copy of the network that the
    # exporter's symbolic shape tracing pays for
    seg = _segmenter(2, decoder_inputs, shared_decoder, num_inference_steps=2)
    path = export_onnx(seg, tmp_path / "segmenter.onnx", (torch.rand(1, 1, 16, 16, 16),), size_divisor=4)
    # the whole sampler (noise, DDIM loop, class probabilities) at another spatial size than the example's
    assert compare_onnx(seg, path, (torch.rand(1, 1, 32, 16, 24),)) < 1e-4
