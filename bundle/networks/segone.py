"""SegOne: a U-Net whose only learned operators are kernel-size-1 (channel) convolutions.

See ``docs/architecture.md`` for the design and the measurements behind it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.layers.utils import get_act_layer
from monai.utils import ensure_tuple_rep

from bundle.networks.blocks import (
    DEFAULT_ACT,
    DEFAULT_NORM,
    ChannelMixBlock,
    ConditionedPointwise,
    ConditionEmbedding,
    FiLM,
    GlobalContext,
    ShuffleUp,
    UnshuffleDown,
    channel_map,
    conv1x1,
    exporting,
    face_neighbours,
    norm_layer,
    pixel_shuffle,
    pixel_unshuffle,
    repeat_items,
    skip_bias_before,
    sum_face_neighbours,
)

__all__ = ["SegOne", "Unconditioned"]


class Unconditioned(nn.Module):
    """Stands where a :class:`FiLM` would, in a network built without conditioning: returns ``x`` unchanged."""

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """
        Args:
            x: tensor of shape ``[B, C, *S]``.
            cond: conditioning vector (``None`` in an unconditioned network); ignored.

        Returns:
            ``x`` itself, ``[B, C, *S]``.
        """
        return x


class _EncoderStage(nn.Module):
    """One resolution level of the encoder: optional unshuffle-downsampling, then channel-mix blocks."""

    def __init__(self, down: nn.Module, blocks: nn.Module) -> None:
        super().__init__()
        self.down = down
        self.blocks = blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.down(x))


class _DecoderStage(nn.Module):
    """One resolution level of the decoder: shuffle-upsample, FiLM the skip, fuse by concatenation (with the
    decoder's own inputs at the finest level, when given), mix."""

    def __init__(self, up: nn.Module, skip_film: nn.Module, fuse: nn.Module, blocks: nn.Module) -> None:
        super().__init__()
        self.up = up
        self.skip_film = skip_film
        self.fuse = fuse
        self.blocks = blocks

    def forward(
        self, x: torch.Tensor, skip: torch.Tensor, cond: torch.Tensor | None, late: torch.Tensor | None = None
    ) -> torch.Tensor:
        parts = [self.up(x), self.skip_film(skip, cond)]
        if late is not None:
            parts.append(late)
        return self.blocks(self.fuse(torch.cat(parts, dim=1)))


class _ConditionedLayer(nn.Module):
    """A prompt-controlled kernel-size-1 convolution (:class:`~bundle.networks.blocks.ConditionedPointwise`), then a
    norm and an activation: one layer of a shared decoder's per-prompt part."""

    def __init__(self, conv: nn.Module, norm_act: nn.Module) -> None:
        super().__init__()
        self.conv = conv
        self.norm_act = norm_act

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        return self.norm_act(self.conv(x, cond))


class _Stem(nn.Module):
    """Input to the first level: optional pixel-unshuffle by ``scale``, 1x1 projection, norm, activation."""

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, scale: int, norm: str | tuple, act
    ) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.scale = scale
        self.proj = conv1x1(spatial_dims, in_channels * scale**spatial_dims, out_channels)
        self.norm_act = _norm_act(spatial_dims, out_channels, norm, act)
        skip_bias_before(self.proj, self.norm_act[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale > 1:
            x = pixel_unshuffle(x, self.spatial_dims, self.scale)
        return self.norm_act(self.proj(x))


class _Head(nn.Module):
    """First level to output: 1x1 projection to ``out_channels * scale**D`` channels, then pixel-shuffle.

    With ``refine_channels > 0`` (and ``scale > 1``) the projection makes ``refine_channels`` channels per
    full-resolution voxel instead; they are concatenated with the network's input at that voxel and mixed by two
    1x1 convolutions into the output: a light full-resolution skip of the raw input, so each voxel's own
    intensity reaches its output directly. ``inputs_used`` selects the input channels it sees; with
    ``refine_neighbours`` it sees them at the voxel's face neighbours too (:func:`face_neighbours`), so the
    full-resolution decision sees the local edge, not only its own intensity. With ``hidden_neighbours`` the output
    is a learned 7-point stencil (in 3D) of the hidden channels: the last 1x1 convolution makes one output group per
    face neighbour and :func:`sum_face_neighbours` adds each at its place, so neighbouring full-resolution voxels of
    different blocks meet before the output, as in a U-Net's last 3x3x3 convolution.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        scale: int,
        refine_channels: int = 0,
        inputs_used: Sequence[int] = (),
        act: str | tuple = DEFAULT_ACT,
        refine_neighbours: bool = False,
        hidden_neighbours: bool = False,
    ) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.scale = scale
        self.refine = refine_channels > 0 and scale > 1
        mid = refine_channels if self.refine else out_channels
        self.proj = conv1x1(spatial_dims, in_channels, mid * scale**spatial_dims)
        self.inputs_used: list[int] = [int(c) for c in inputs_used]
        self.refine_neighbours = bool(refine_neighbours) and self.refine
        seen = len(self.inputs_used) * ((2 * spatial_dims + 1) if self.refine_neighbours else 1)
        self.hidden_neighbours = bool(hidden_neighbours) and self.refine
        if self.refine:
            self.mix = conv1x1(spatial_dims, mid + seen, mid)
            self.act = get_act_layer(act)
            self.out = conv1x1(
                spatial_dims, mid, out_channels * ((2 * spatial_dims + 1) if self.hidden_neighbours else 1)
            )
        else:
            self.mix, self.act, self.out = nn.Identity(), nn.Identity(), nn.Identity()

    def forward(self, x: torch.Tensor, inputs: torch.Tensor, prompts_per_image: int = 1) -> torch.Tensor:
        """
        Args:
            x: the finest decoder output ``[B * K, in_channels, *s]``.
            inputs: the network input ``[B, C, *S]``, ``S = s * scale``, shared by each group of ``K`` rows of ``x``.
            prompts_per_image: ``K``.

        Returns:
            ``[B * K, out_channels, *S]``.
        """
        if self.refine and not self.hidden_neighbours and not torch.jit.is_scripting():
            if exporting():
                return self.refine_by_offset(self.proj(x), repeat_items(inputs, prompts_per_image))
            if not torch.jit.is_tracing():
                return self.refine_folded(x, inputs, prompts_per_image)
        if prompts_per_image > 1:
            inputs = repeat_items(inputs, prompts_per_image)
        return self.refine_at_full_resolution(x, inputs)

    def refine_at_full_resolution(self, x: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """The head in its defining order: projection, pixel-shuffle, then (with the refinement) the two 1x1 maps at
        every full-resolution voxel. TorchScript and traces run it, and the refinement with ``hidden_neighbours``.

        Args:
            x: the finest decoder output ``[B, in_channels, *s]``.
            inputs: the network input ``[B, C, *S]``, ``S = s * scale``.

        Returns:
            ``[B, out_channels, *S]``.
        """
        x = self.proj(x)
        if self.scale > 1:
            x = pixel_shuffle(x, self.spatial_dims, self.scale)
        if self.refine:
            x = self.out(self.act(self.mix(torch.cat([x, self.refine_inputs(inputs)], dim=1))))
            if self.hidden_neighbours:
                x = sum_face_neighbours(x, self.spatial_dims)
        return x

    def refine_inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        """The input channels the refinement sees at full resolution: ``[B, seen, *S]``."""
        used = inputs[:, self.inputs_used]
        return face_neighbours(used, self.spatial_dims) if self.refine_neighbours else used

    def refine_folded(self, x: torch.Tensor, inputs: torch.Tensor, prompts_per_image: int = 1) -> torch.Tensor:
        """The refinement at the low resolution with its linear maps folded together: the eager path.

        Every operator of the refinement (without ``hidden_neighbours``) acts on one full-resolution voxel, and voxel
        ``k`` of a ``scale**D`` block is channel group ``k`` of the low-resolution tensor. So the mix's map of the
        projected channels folds into the projection (``kron(W_mix, I) @ W_proj``: one 1x1 map at the low
        resolution), its map of the input channels is computed once per input for all ``K`` prompts, the activation
        and the output map act on the low-resolution groups too, and only the ``out_channels`` outputs are
        pixel-shuffled. Nothing ``refine_channels`` wide is moved at full resolution, which was most of the head's
        time with several prompts (docs/benchmarks.md). The same values as the full-resolution order, to float
        rounding (tested).

        Args:
            x: the finest decoder output ``[B * K, in_channels, *s]``.
            inputs: the network input ``[B, C, *S]``, ``S = s * scale``.
            prompts_per_image: ``K``.

        Returns:
            ``[B * K, out_channels, *S]``.
        """
        n, mid = self.scale**self.spatial_dims, self.mix.out_channels
        b, sizes = inputs.shape[0], list(x.shape[2:])
        positions = x[0, 0].numel()
        eye = torch.eye(n, dtype=x.dtype, device=x.device)
        w_mix = self.mix.weight.reshape(mid, -1)
        to_hidden = torch.kron(w_mix[:, :mid], eye)  # channel c * n + k: hidden channel c of block voxel k
        weight = to_hidden @ self.proj.weight.reshape(mid * n, -1)
        bias = to_hidden @ self.proj.bias + self.mix.bias.repeat_interleave(n)
        seen = pixel_unshuffle(self.refine_inputs(inputs), self.spatial_dims, self.scale).reshape(b, -1, positions)
        shared = channel_map(torch.kron(w_mix[:, mid:], eye), seen, bias).unsqueeze(1)
        hidden = channel_map(weight, x.reshape(x.shape[0], x.shape[1], positions))
        hidden = self.act(hidden.reshape(b, prompts_per_image, mid * n, -1) + shared)
        hidden = hidden.reshape(b * prompts_per_image, mid * n, positions)
        out = channel_map(torch.kron(self.out.weight.reshape(-1, mid), eye), hidden, self.out.bias.repeat_interleave(n))
        return pixel_shuffle(out.reshape([b * prompts_per_image, out.shape[1]] + sizes), self.spatial_dims, self.scale)

    def refine_by_offset(self, x: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """The refinement at the low resolution, one batch item per block offset, then one pixel-shuffle.

        Without ``hidden_neighbours`` (whose stencil crosses block borders, so :meth:`forward` exports it at full
        resolution) every operator of the refinement acts on one voxel, so it commutes with the shuffle: the
        ``scale**D`` offsets of a block become batch items, the input is pixel-unshuffled to meet them, and only the
        output channels are shuffled to full resolution (the same values as :meth:`forward`'s order). Exported graphs
        use it: onnxruntime's ``DepthToSpace`` of the ``refine_channels`` full-resolution channels was two thirds of
        the graph's shuffle time (docs/benchmarks.md).

        Args:
            x: the projection's output ``[B, refine_channels * scale**D, *s]``.
            inputs: the network input ``[B, C, *S]``, ``S = s * scale``.

        Returns:
            ``[B, out_channels, *S]``.
        """
        b, n = x.shape[0], self.scale**self.spatial_dims
        sizes = list(x.shape[2:])
        # the neighbours are gathered at full resolution, where they are neighbours, before the unshuffle
        image = pixel_unshuffle(self.refine_inputs(inputs), self.spatial_dims, self.scale)
        # channel c * n + k holds block offset k of channel c: gather the channels of each offset
        z = torch.cat([x.reshape(b, x.shape[1] // n, n, -1), image.reshape(b, image.shape[1] // n, n, -1)], dim=1)
        z = z.transpose(1, 2).reshape([b * n, z.shape[1]] + sizes)
        z = self.out(self.act(self.mix(z)))
        z = z.reshape(b, n, z.shape[1], -1).transpose(1, 2).reshape([b, z.shape[1] * n] + sizes)
        return pixel_shuffle(z, self.spatial_dims, self.scale)


class SegOne(nn.Module):
    """A U-Net built only from kernel-size-1 convolutions and parameter-free data movement.

    Downsampling is pixel-unshuffle (factor 2) followed by a 1x1 projection, upsampling is a 1x1 projection followed
    by pixel-shuffle, and skip connections are concatenated and fused by a 1x1 convolution, as in a U-Net. An
    unshuffle pyramid alone lets an output voxel see only the aligned ``2**L`` block it lives in; SegOne widens that
    with two parameter-free mechanisms (see ``docs/architecture.md``):

    - a :class:`~bundle.networks.blocks.SpatialShift` before every channel-mix block moves channel groups to the
      face neighbours, so at level ``l`` each block reaches ``2**l`` voxels further, across block borders;
    - a :class:`~bundle.networks.blocks.GlobalContext` at the bottleneck adds a transform of the global mean feature,
      so every output depends on every input voxel.

    Optional conditioning, for use as a diffusion denoiser: a timestep and/or a text-embedding vector are turned into
    one vector that modulates (FiLM: per-channel scale and shift) the bottleneck latent and every decoder skip; or,
    with ``shared_decoder``, only the decoder's finest output, so that the whole U-Net runs once per image and only a
    small head runs per prompt.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: number of input channels.
        out_channels: number of output channels.
        features: channels at each resolution level, full resolution first; ``len(features) - 1`` downsamplings.
        encoder_blocks: channel-mix blocks at each encoder level (the last is the bottleneck); an int for all.
            Default ``(0, 1, 2, 2, ...)``: none at full resolution, where positions are many and blocks cost most
            (on MSD hippocampus they cost 2.4x per training step for no measurable gain; docs/architecture.md).
        decoder_blocks: channel-mix blocks at each decoder level, ``len(features) - 1`` values indexed like
            ``features`` (full resolution first); an int for all. Default ``(0, 1, 1, ...)``.
        expansion: hidden width of a channel-mix block as a multiple of its channels.
        act: activation type and arguments (MONAI ``get_act_layer`` format).
        norm: normalisation type and arguments (MONAI ``get_norm_layer`` format).
        spatial_shift: shift channel groups to neighbours before each block (False: aligned-block pyramid only).
        global_context: add the global-mean context at the bottleneck.
        with_timestep: expect a diffusion timestep in ``forward``.
        text_dim: length of the text embedding expected in ``forward`` (``None``: no text conditioning).
        cond_channels: length of the internal conditioning vector.
        stem_scale: the stem pixel-unshuffles the input by this factor before its 1x1 projection, and the head
            projects to ``out_channels * stem_scale**D`` channels and pixel-shuffles back. With 2, no layer runs at
            full resolution (as in MONAI's UNet, whose first convolution is strided): the per-voxel work that
            dominates CPU time moves to an eighth of the positions, and each output voxel still has its own
            output channel. 1: the first level is at full resolution.
        refine_channels: with ``stem_scale > 1``, the head makes this many channels per full-resolution voxel,
            concatenates the network input there and mixes both with two 1x1 convolutions (0: the head's
            pixel-shuffle gives the output directly).
        refine_inputs: the input channels the refinement sees (default all). A diffusion denoiser passes only its
            image channels: its noisy-mask channel is pure noise at the first sampling step, and a per-voxel,
            timestep-blind mix would copy that noise to the output.
        refine_neighbours: the refinement also sees those input channels at the voxel's ``2 * spatial_dims`` face
            neighbours (parameter-free copies, :func:`~bundle.networks.blocks.face_neighbours`), so a
            full-resolution decision sees the local intensity edge; without it each voxel sees only its own value.
            Needs the refinement (``refine_channels > 0``, ``stem_scale > 1``).
        refine_hidden_neighbours: the refinement's output is a learned stencil of its hidden channels at the voxel and
            at its ``2 * spatial_dims`` face neighbours (a 1x1 convolution to one group per neighbour, summed in place
            by :func:`~bundle.networks.blocks.sum_face_neighbours`), so that full-resolution voxels of neighbouring
            ``stem_scale`` blocks meet before the output, as in MONAI UNet's last 3x3x3 convolution; without it each
            output voxel sees only its own block's features. Needs the refinement.
        decoder_inputs: input channels that bypass the encoder: pixel-unshuffled by ``stem_scale`` and concatenated
            into the finest decoder stage's fusion (default none: every channel feeds the stem). A diffusion denoiser
            passes its noisy-mask channel here, so its encoder sees the image alone and is the same for every prompt
            of an image, at every sampling step: :meth:`forward_shared_image` encodes each image once for all its
            prompts in training and sampling too, not only at the first sampling step.
        shared_decoder: the conditioning modulates the finest decoder output only (FiLM, then a 1x1 fusion with the
            ``decoder_inputs`` channels, a norm and an activation, then the head), not the latent and the skips: the
            encoder and the decoder see the image alone, so :meth:`forward_prompts` and :meth:`forward_shared_image`
            run them once per image and, per prompt, only that fusion and the head, as a multi-class U-Net's last
            layer serves every class. Needs conditioning (``with_timestep`` or ``text_dim``); no deep supervision
            (its heads would read unconditioned levels).
        prompt_layers: with ``shared_decoder``, the per-prompt part is this many prompt-controlled kernel-size-1
            convolutions (:class:`~bundle.networks.blocks.ConditionedPointwise`: a ``[C, C]`` matrix per prompt
            instead of a per-channel scale and shift), each followed by a norm and an activation, the first also
            fusing the ``decoder_inputs`` channels, instead of FiLM and one shared fusion (0).
        deep_supervision: number of extra 1x1 output heads, on the decoder's outputs at levels ``1..n`` (each
            ``stem_scale * 2**level`` times coarser than the input), for deep supervision in training
            (:meth:`forward_deep`); ``forward`` never runs them. At most ``len(features) - 2``.

    Shapes:
        ``x [B, in_channels, *S] -> [B, out_channels, *S]``; :meth:`forward_deep` adds ``[B, out_channels,
        *S / (stem_scale * 2**level)]`` for ``level = 1..deep_supervision``. Every size in ``S`` is a multiple of
        ``stem_scale * 2 ** (len(features) - 1)`` (see :attr:`size_divisor`). ``timesteps [B]``, ``context [B, text_dim]`` or
        ``[B, 1, text_dim]`` when the network was built with them.

    Example::

        net = SegOne(spatial_dims=3, in_channels=1, out_channels=3)
        y = net(torch.rand(1, 1, 48, 64, 48))  # [1, 3, 48, 64, 48]

    Raises:
        ValueError: when ``spatial_dims`` is not 2 or 3, ``features`` has fewer than two levels, ``stem_scale < 1``,
            ``refine_inputs`` or ``decoder_inputs`` names a channel outside ``range(in_channels)``, ``decoder_inputs``
            leaves no channel for the encoder, ``refine_neighbours`` or ``refine_hidden_neighbours`` is set without the
            refinement, ``deep_supervision`` is outside ``[0, len(features) - 2]``, ``shared_decoder`` is set
            without conditioning or with deep supervision, or ``prompt_layers`` is negative or set without
            ``shared_decoder``.
    """

    # TorchScript constants, so a network compiles without the branches it does not use (conditioning; inputs that
    # bypass the encoder, whose empty list TorchScript could not type)
    __constants__ = ["conditioned", "has_decoder_inputs", "shared_decoder", "head_reads_decoder_inputs"]

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        features: Sequence[int] = (16, 32, 64, 128, 256),
        encoder_blocks: None | int | Sequence[int] = None,
        decoder_blocks: None | int | Sequence[int] = None,
        expansion: float = 2.0,
        act: str | tuple = DEFAULT_ACT,
        norm: str | tuple = DEFAULT_NORM,
        spatial_shift: bool = True,
        global_context: bool = True,
        with_timestep: bool = False,
        text_dim: int | None = None,
        cond_channels: int = 128,
        stem_scale: int = 1,
        refine_channels: int = 0,
        refine_inputs: Sequence[int] | None = None,
        refine_neighbours: bool = False,
        refine_hidden_neighbours: bool = False,
        decoder_inputs: Sequence[int] | None = None,
        shared_decoder: bool = False,
        prompt_layers: int = 0,
        deep_supervision: int = 0,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        features = tuple(int(f) for f in features)
        if len(features) < 2:
            raise ValueError(f"features needs at least two levels, got {features}.")
        levels = len(features)
        if stem_scale < 1:
            raise ValueError(f"stem_scale must be >= 1, got {stem_scale}.")
        if encoder_blocks is None:
            encoder_blocks = [min(level, 2) for level in range(levels)]
        if decoder_blocks is None:
            decoder_blocks = [min(level, 1) for level in range(levels - 1)]
        enc_blocks = ensure_tuple_rep(encoder_blocks, levels)
        dec_blocks = ensure_tuple_rep(decoder_blocks, levels - 1)

        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.features = features
        self.stem_scale = int(stem_scale)
        self.size_divisor = 2 ** (levels - 1) * self.stem_scale
        self.conditioned = with_timestep or text_dim is not None
        self.shared_decoder = bool(shared_decoder)
        if self.shared_decoder and not self.conditioned:
            raise ValueError(
                "shared_decoder needs conditioning (with_timestep or text_dim): there is nothing to share."
            )
        if self.shared_decoder and deep_supervision:
            raise ValueError(
                "shared_decoder leaves the decoder's coarser levels unconditioned, so deep supervision heads there "
                f"could not tell prompts apart; got deep_supervision={deep_supervision}."
            )
        if prompt_layers < 0 or (prompt_layers > 0 and not self.shared_decoder):
            raise ValueError(
                f"prompt_layers ({prompt_layers}) must be >= 0 and needs shared_decoder: it builds the per-prompt part "
                "of a shared decoder."
            )
        self.decoder_inputs = sorted({int(c) for c in decoder_inputs or ()})
        self.has_decoder_inputs = len(self.decoder_inputs) > 0
        if any(not 0 <= c < in_channels for c in self.decoder_inputs) or len(self.decoder_inputs) >= in_channels:
            raise ValueError(
                f"decoder_inputs {self.decoder_inputs} must be channels of the {in_channels}-channel input and leave "
                "at least one for the encoder."
            )
        self.encoder_inputs = [c for c in range(in_channels) if c not in self.decoder_inputs]
        late_channels = len(self.decoder_inputs) * self.stem_scale**spatial_dims

        def mix(channels: int, count: int) -> nn.Module:
            return nn.Sequential(
                *[
                    ChannelMixBlock(spatial_dims, channels, expansion, act=act, norm=norm, shift=spatial_shift)
                    for _ in range(count)
                ]
            )

        def film(channels: int) -> nn.Module:
            in_decoder = self.conditioned and not self.shared_decoder
            return FiLM(spatial_dims, channels, cond_channels) if in_decoder else Unconditioned()

        self.cond_embed: nn.Module = (
            ConditionEmbedding(cond_channels, use_timestep=with_timestep, text_dim=text_dim)
            if self.conditioned
            else nn.Identity()
        )

        stem = _Stem(spatial_dims, len(self.encoder_inputs), features[0], self.stem_scale, norm, act)
        encoder: list[nn.Module] = [_EncoderStage(stem, mix(features[0], enc_blocks[0]))]
        for level in range(1, levels):
            down = UnshuffleDown(spatial_dims, features[level - 1], features[level], act=act, norm=norm)
            encoder.append(_EncoderStage(down, mix(features[level], enc_blocks[level])))
        self.encoder = nn.ModuleList(encoder)

        self.context: nn.Module = (
            GlobalContext(spatial_dims, features[-1], act=act) if global_context else nn.Identity()
        )
        self.latent_film = film(features[-1])

        decoder: list[nn.Module] = []
        for level in range(levels - 2, -1, -1):
            c = features[level]
            fused = 2 * c + (late_channels if level == 0 and not self.shared_decoder else 0)
            fuse = nn.Sequential(conv1x1(spatial_dims, fused, c), _norm_act(spatial_dims, c, norm, act))
            skip_bias_before(fuse[0], fuse[1][0])
            decoder.append(
                _DecoderStage(ShuffleUp(spatial_dims, features[level + 1], c), film(c), fuse, mix(c, dec_blocks[level]))
            )
        self.decoder = nn.ModuleList(decoder)
        # the per-prompt part of a shared decoder: FiLM, then the late inputs fused in, as the finest stage does; or
        # prompt-controlled layers, the first of which fuses the late inputs
        self.prompt_film: nn.Module = (
            FiLM(spatial_dims, features[0], cond_channels)
            if self.shared_decoder and not prompt_layers
            else Unconditioned()
        )
        self.prompt_layers = nn.ModuleList(
            [
                _ConditionedLayer(
                    ConditionedPointwise(
                        spatial_dims, features[0] + (late_channels if i == 0 else 0), features[0], cond_channels
                    ),
                    _norm_act(spatial_dims, features[0], norm, act),
                )
                for i in range(prompt_layers)
            ]
        )
        self.prompt_fuse: nn.Module = nn.Identity()
        if self.shared_decoder and not prompt_layers:
            self.prompt_fuse = nn.Sequential(
                conv1x1(spatial_dims, features[0] + late_channels, features[0]),
                _norm_act(spatial_dims, features[0], norm, act),
            )
            skip_bias_before(self.prompt_fuse[0], self.prompt_fuse[1][0])
        used = list(range(in_channels)) if refine_inputs is None else [int(c) for c in refine_inputs]
        if any(not 0 <= c < in_channels for c in used):
            raise ValueError(f"refine_inputs {used} must be channels of the {in_channels}-channel input.")
        for name, wanted in (
            ("refine_neighbours", refine_neighbours),
            ("refine_hidden_neighbours", refine_hidden_neighbours),
        ):
            if wanted and not (refine_channels > 0 and self.stem_scale > 1):
                raise ValueError(
                    f"{name} needs the refinement head (refine_channels > 0 and stem_scale > 1); got "
                    f"refine_channels={refine_channels}, stem_scale={self.stem_scale}."
                )
        # the head's input channels then differ between the prompts of an image (forward_shared_image)
        self.head_reads_decoder_inputs = any(c in self.decoder_inputs for c in used)
        self.head = _Head(
            spatial_dims,
            features[0],
            out_channels,
            self.stem_scale,
            refine_channels,
            used,
            act,
            refine_neighbours,
            refine_hidden_neighbours,
        )
        if not 0 <= deep_supervision <= levels - 2:
            raise ValueError(
                f"deep_supervision must be in [0, {levels - 2}] for {levels} levels, got {deep_supervision}."
            )
        self.deep_supervision = int(deep_supervision)
        # heads[i] reads level i + 1, the output of decoder stage len(decoder) - 2 - i
        self.deep_heads = nn.ModuleList(
            [conv1x1(spatial_dims, features[level], out_channels) for level in range(1, deep_supervision + 1)]
        )

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor | None = None, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """
        Args:
            x: image (and, for diffusion, the noisy mask) ``[B, in_channels, *S]``.
            timesteps: diffusion timesteps ``[B]``; required when built with ``with_timestep=True``.
            context: text embeddings ``[B, text_dim]`` or ``[B, 1, text_dim]``; required when built with ``text_dim``.

        Returns:
            Logits ``[B, out_channels, *S]``.

        Raises:
            ValueError: when ``x`` does not have ``spatial_dims`` spatial dimensions or a spatial size is not a
                multiple of :attr:`size_divisor`; when ``timesteps`` or ``context`` is None though the network was
                built to expect it.
        """
        return self.head(self._decode(x, timesteps, context)[-1], x)

    @torch.jit.export
    def forward_shared_image(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        prompts_per_image: int = 1,
    ) -> torch.Tensor:
        """:meth:`forward` for ``K`` rows per image that differ only in their ``decoder_inputs`` channels (a diffusion
        denoiser's noisy masks, one per prompt), with the encoder run once per image.

        Args:
            x: ``[B * K, in_channels, *S]``, image-major: rows ``b * K .. b * K + K - 1`` share their encoder channels
                (only row ``b * K``'s are read).
            timesteps: ``[B * K]`` timesteps; required when built with ``with_timestep=True``.
            context: ``[B * K, text_dim]`` text embeddings; required when built with ``text_dim``.
            prompts_per_image: ``K``.

        Returns:
            Logits ``[B * K, out_channels, *S]``, equal to :meth:`forward` on ``x``.

        Raises:
            ValueError: when the network has no ``decoder_inputs`` (every channel then reaches the encoder, which
                cannot be shared), the batch is not a multiple of ``K``, or as :meth:`forward`.
        """
        if not self.has_decoder_inputs:
            raise ValueError("forward_shared_image needs decoder_inputs: without them every channel feeds the encoder.")
        if prompts_per_image < 1 or x.shape[0] % prompts_per_image != 0:
            raise ValueError(
                f"a batch of {x.shape[0]} rows is not a whole number of images x {prompts_per_image} prompts"
            )
        # index_select, not x[::K]: slicing a batch of MONAI MetaTensors (a caller's input may still be one) splits its
        # metadata
        first = x.index_select(0, torch.arange(0, x.shape[0], prompts_per_image, device=x.device))
        decoded = self._decode_prompts(self._encode(first), timesteps, context, self._late_inputs(x), prompts_per_image)
        if self.head_reads_decoder_inputs:
            return self.head(decoded[-1], x)
        return self.head(decoded[-1], first, prompts_per_image)

    @torch.jit.export
    def forward_deep(
        self, x: torch.Tensor, timesteps: torch.Tensor | None = None, context: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """The output and the deep-supervision heads' outputs, for a training loss.

        Args:
            x, timesteps, context: as for :meth:`forward`.

        Returns:
            ``[output, head at level 1, ..., head at level deep_supervision]``: ``[B, out_channels, *S]``, then
            ``[B, out_channels, *S / (stem_scale * 2**level)]``.
        """
        decoded = self._decode(x, timesteps, context)
        outputs = [self.head(decoded[-1], x)]
        for i, head in enumerate(self.deep_heads):
            outputs.append(head(decoded[-2 - i]))
        return outputs

    @torch.jit.export
    def forward_prompts(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        prompts_per_image: int = 1,
    ) -> torch.Tensor:
        """:meth:`forward` for ``K`` conditionings of each input, with the encoder run once per input.

        The encoder and the bottleneck context do not see the conditioning, so an input's features are the same for
        every prompt: only the conditioned decoder and the head run ``K`` times (with ``shared_decoder``, only the
        per-prompt fusion and the head). Equal to ``forward`` on the inputs
        repeated ``K`` times (image-major), at the cost of one encoder pass instead of ``K``.

        Args:
            x: ``B`` inputs ``[B, in_channels, *S]``.
            timesteps: ``[B * K]`` timesteps, image-major; required when built with ``with_timestep=True``.
            context: ``[B * K, text_dim]`` text embeddings, image-major; required when built with ``text_dim``.
            prompts_per_image: ``K``.

        Returns:
            Logits ``[B * K, out_channels, *S]``: row ``b * K + k`` is input ``b`` under conditioning ``k``.

        Raises:
            ValueError: as :meth:`forward`.
        """
        late = self._late_inputs(x)
        if late is not None:
            late = repeat_items(late, prompts_per_image)
        decoded = self._decode_prompts(self._encode(x), timesteps, context, late, prompts_per_image)
        return self.head(decoded[-1], x, prompts_per_image)

    def _decode(
        self, x: torch.Tensor, timesteps: torch.Tensor | None = None, context: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """The decoder stages' outputs, coarsest first (the last feeds the head)."""
        return self._decode_skips(self._encode(x), timesteps, context, self._late_inputs(x))

    def _late_inputs(self, x: torch.Tensor) -> torch.Tensor | None:
        """The ``decoder_inputs`` channels at the finest level's resolution, ``[B, len * stem_scale**D, *S / stem]``."""
        if self.has_decoder_inputs:
            late = x[:, self.decoder_inputs]
            return pixel_unshuffle(late, self.spatial_dims, self.stem_scale) if self.stem_scale > 1 else late
        return None

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder stages' outputs (of the ``encoder_inputs`` channels), finest first; the last is the bottleneck
        with its global context."""
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(
                f"SegOne({self.spatial_dims}D) expects input [B, C, *S] with {self.spatial_dims} spatial dims, "
                f"got shape {list(x.shape)}."
            )
        for s in x.shape[2:]:
            if s % self.size_divisor != 0:
                raise ValueError(
                    f"SegOne with {len(self.features) - 1} unshuffle levels and stem_scale {self.stem_scale} needs every "
                    f"spatial size to be a multiple of {self.size_divisor}; got spatial shape {list(x.shape[2:])} "
                    "(pad, e.g. with DivisiblePad)."
                )
        if self.has_decoder_inputs:
            x = x[:, self.encoder_inputs]
        skips: list[torch.Tensor] = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        skips[-1] = self.context(skips[-1])
        return skips

    def _decode_prompts(
        self,
        skips: list[torch.Tensor],
        timesteps: torch.Tensor | None,
        context: torch.Tensor | None,
        late: torch.Tensor | None,
        prompts_per_image: int,
    ) -> list[torch.Tensor]:
        """:meth:`_decode_skips` for ``K`` conditionings of each of the ``B`` encoded inputs (``late``,
        ``timesteps`` and ``context`` have ``B * K`` rows, image-major): the conditioned decoder runs ``B * K`` times,
        a shared one ``B`` times."""
        if self.shared_decoder:
            return self._decode_skips(skips, timesteps, context, late, prompts_per_image)
        return self._decode_skips([repeat_items(s, prompts_per_image) for s in skips], timesteps, context, late)

    def _decode_skips(
        self,
        skips: list[torch.Tensor],
        timesteps: torch.Tensor | None,
        context: torch.Tensor | None,
        late: torch.Tensor | None = None,
        prompts_per_image: int = 1,
    ) -> list[torch.Tensor]:
        """The decoder stages' outputs from the encoder's (:meth:`_encode`) and the late inputs
        (:meth:`_late_inputs`, fused at the finest stage), coarsest first. With ``shared_decoder`` the decoder runs on
        the ``B`` inputs of ``skips`` and its finest output is repeated ``prompts_per_image`` times for the per-prompt
        part; otherwise ``skips`` already has a row per conditioning and ``prompts_per_image`` is 1."""
        cond: torch.Tensor | None = None
        if self.conditioned:
            cond = self.cond_embed(timesteps, context)
        x = self.latent_film(skips[-1], cond)
        decoded: list[torch.Tensor] = []
        last = len(self.decoder) - 1
        for i, stage in enumerate(self.decoder):
            finest_late = late if i == last and not self.shared_decoder else None
            x = stage(x, skips[-(i + 2)], cond, finest_late)
            decoded.append(x)
        if self.shared_decoder:
            x = self.prompt_film(repeat_items(x, prompts_per_image), cond)
            if late is not None:
                x = torch.cat([x, late], dim=1)
            for layer in self.prompt_layers:
                x = layer(x, cond)
            decoded[-1] = self.prompt_fuse(x)
        return decoded


def _norm_act(spatial_dims: int, channels: int, norm: str | tuple, act: str | tuple) -> nn.Module:
    return nn.Sequential(norm_layer(norm, spatial_dims, channels), get_act_layer(act))
