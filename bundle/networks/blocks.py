"""Building blocks of SegOne, in which every learned operator acts on the channel axis only.

Spatial context is produced by parameter-free data movement:

- :func:`pixel_unshuffle` / :func:`pixel_shuffle` (MONAI's ``pixelshuffle``) move ``r**D`` neighbouring voxels into
  channels and back (down- and upsampling);
- :class:`SpatialShift` moves channel groups by one position along each spatial axis, so that a following
  kernel-size-1 convolution mixes a voxel with its face neighbours (Wu et al., 2018, "Shift: A Zero FLOP, Zero
  Parameter Alternative to Spatial Convolutions");
- :class:`GlobalContext` averages over all positions, so that every output depends on the whole input.

The learned operators are kernel-size-1 convolutions (:class:`PointwiseConv2d` / :class:`PointwiseConv3d`) and
linear maps of conditioning vectors (timestep and text embeddings), which have no spatial extent.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from monai.networks.utils import pixelshuffle

__all__ = [
    "DEFAULT_ACT",
    "DEFAULT_NORM",
    "norm_layer",
    "InstanceNorm",
    "pixel_unshuffle",
    "pixel_shuffle",
    "space_to_depth",
    "exporting",
    "repeat_items",
    "channel_map",
    "conv1x1",
    "skip_bias_before",
    "PointwiseConv2d",
    "PointwiseConv3d",
    "SpatialShift",
    "face_neighbours",
    "sum_face_neighbours",
    "ChannelMixBlock",
    "UnshuffleDown",
    "ShuffleUp",
    "GlobalContext",
    "FiLM",
    "ConditionedPointwise",
    "ConditionEmbedding",
]

# MONAI ``get_act_layer`` / ``get_norm_layer`` arguments shared by all SegOne blocks (BasicUNet's activation, and
# InstanceNorm as in MONAI's UNet and nnU-Net)
DEFAULT_ACT = ("leakyrelu", {"negative_slope": 0.1, "inplace": True})
DEFAULT_NORM = ("instance", {"affine": True})


def norm_layer(norm: str | tuple, spatial_dims: int, channels: int) -> nn.Module:
    """MONAI's ``get_norm_layer``, with an instance norm without running statistics built as :class:`InstanceNorm`.

    Args:
        norm: normalisation type and arguments (MONAI ``get_norm_layer`` format), e.g. :data:`DEFAULT_NORM`.
        spatial_dims: number of spatial dimensions.
        channels: channels to normalise.

    Returns:
        The normalisation module; for ``"instance"`` (without ``track_running_stats``) an :class:`InstanceNorm` with
        the same ``eps``, ``affine`` and parameter names.
    """
    layer = get_norm_layer(norm, spatial_dims=spatial_dims, channels=channels)
    if isinstance(layer, nn.modules.instancenorm._InstanceNorm) and not layer.track_running_stats:
        return InstanceNorm(channels, eps=layer.eps, affine=layer.affine)
    return layer


class InstanceNorm(nn.GroupNorm):
    """Instance normalisation (each channel of each sample over its positions), computed as a group norm with one
    channel per group.

    The same values and parameters (``weight``, ``bias``) as ``nn.InstanceNorm2d/3d`` without running statistics
    (MONAI's ``"instance"`` norm), so checkpoints load either way. PyTorch's ``instance_norm`` reshapes the input to
    ``[1, B * C, *S]`` and runs a batch norm: on this CPU that took three times as long as ``group_norm`` in the
    forward pass on SegOne's tensors (30 % of an inference call), and it returns a view, on which an in-place
    activation makes autograd copy the whole tensor four times in the backward pass (docs/benchmarks.md). While
    exporting (ONNX, ``torch.export``) it runs ``instance_norm``, so exported graphs keep ``InstanceNormalization``.

    Args:
        channels: channels ``C``.
        eps: added to the variance.
        affine: whether to learn a per-channel scale and shift.

    Shapes:
        ``[B, C, *S] -> [B, C, *S]``.
    """

    def __init__(self, channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(channels, channels, eps=eps, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: tensor of shape ``[B, C, *S]``.

        Returns:
            Tensor of shape ``[B, C, *S]``: each channel of each sample normalised over ``S``, then scaled and
            shifted per channel.
        """
        if not torch.jit.is_scripting():
            if exporting():
                return F.instance_norm(x, weight=self.weight, bias=self.bias, eps=self.eps)
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


def pixel_unshuffle(x: torch.Tensor, spatial_dims: int, scale_factor: int) -> torch.Tensor:
    """Move each ``r**D`` block of voxels into channels (space-to-depth); the inverse of MONAI's ``pixelshuffle``.

    Same result and channel order as :func:`monai.networks.utils.pixelunshuffle`, written so that TorchScript can
    compile it (MONAI's builds its shape with ``sum(list, [])``, which ``torch.jit.script`` rejects).

    Args:
        x: tensor of shape ``[B, C, *S]`` with ``len(S) == spatial_dims``.
        spatial_dims: number of spatial dimensions, 2 or 3.
        scale_factor: block edge ``r``; every size in ``S`` must be divisible by it.

    Returns:
        Tensor of shape ``[B, C * r**D, *(s // r for s in S)]``.

    Raises:
        ValueError: when a spatial size is not divisible by ``scale_factor``.
    """
    size = x.shape
    r = scale_factor
    # int() because TorchScript types ``int ** int`` as a number, not an int
    reshaped: list[int] = [size[0], size[1]]
    reduced: list[int] = [size[0], size[1] * int(r**spatial_dims)]
    for i in range(spatial_dims):
        s = size[2 + i]
        if s % r != 0:
            raise ValueError(f"pixel_unshuffle: spatial size {s} (dim {2 + i}) is not divisible by {r}.")
        reshaped += [s // r, r]
        reduced.append(s // r)
    # [B, C, s0/r, r, s1/r, r, ...] -> [B, C, r, r, ..., s0/r, s1/r, ...]
    perm: list[int] = [0, 1]
    for i in range(spatial_dims):
        perm.append(2 * i + 3)
    for i in range(spatial_dims):
        perm.append(2 * i + 2)
    if not torch.jit.is_scripting():
        if exporting():
            return _unshuffle_for_export(x, spatial_dims, r)
    return x.reshape(reshaped).permute(perm).reshape(reduced)


def pixel_shuffle(x: torch.Tensor, spatial_dims: int, scale_factor: int) -> torch.Tensor:
    """Move channels into ``r**D`` blocks of voxels (depth-to-space): MONAI's ``pixelshuffle``, also when exported.

    In eager mode, TorchScript and ``torch.compile`` this is :func:`monai.networks.utils.pixelshuffle` (one permuted
    copy; inductor fuses it into the next kernel). While exporting (ONNX, ``torch.export``) it is
    :func:`_shuffle_for_export`: the same values, in a ``DepthToSpace`` and rank-4 transposes instead of a rank-8
    transpose, which onnxruntime runs on a slow generic path.

    Args:
        x: tensor of shape ``[B, C * r**D, *S]`` with ``len(S) == spatial_dims``.
        spatial_dims: number of spatial dimensions, 2 or 3.
        scale_factor: block edge ``r``.

    Returns:
        Tensor of shape ``[B, C, *(s * r for s in S)]``.
    """
    if not torch.jit.is_scripting():
        if exporting():
            return _shuffle_for_export(x, spatial_dims, scale_factor)
    return pixelshuffle(x, spatial_dims, scale_factor)


def exporting() -> bool:
    """True while exporting (ONNX, ``torch.export``): the graph is for another runtime. False in eager runs,
    TorchScript traces and ``torch.compile``, which run on libtorch and take the eager forms (``torch.compile`` of
    the export forms, plain 1x1 convolutions included, ran no faster than eager mode: docs/benchmarks.md)."""
    return bool(torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting())


def repeat_items(x: torch.Tensor, times: int) -> torch.Tensor:
    """Each batch item ``times`` times in a row: ``[B, *R] -> [B * times, *R]``, item-major.

    ``torch.repeat_interleave`` on dim 0, written as expand and reshape so that an exported graph keeps ``times``
    symbolic (a dynamic prompt count).

    Args:
        x: a batch ``[B, *R]``.
        times: how many times each item is repeated.

    Returns:
        ``[B * times, *R]``: rows ``b * times .. b * times + times - 1`` are item ``b``.
    """
    shape = list(x.shape)  # lists, not unpacking: TorchScript needs sizes it can infer
    return x.unsqueeze(1).expand([shape[0], times] + shape[1:]).reshape([shape[0] * times] + shape[1:])


@torch.library.custom_op("segone::space_to_depth", mutates_args=())
def space_to_depth(x: torch.Tensor, block: int) -> torch.Tensor:
    """Move each ``block x block`` tile of a stack of planes into channels: ONNX ``SpaceToDepth`` on one channel.

    Exported to ONNX as one ``SpaceToDepth`` node (``bundle.export.ONNX_TRANSLATIONS``); PyTorch's own
    ``pixel_unshuffle`` exports as a rank-6 Transpose. With a single input channel ONNX's channel order (block offsets
    first) and PyTorch's (channels first) coincide, which is why the input has no channel axis.

    Args:
        x: tensor of shape ``[N, H * block, W * block]``.
        block: tile edge.

    Returns:
        Tensor of shape ``[N, block * block, H, W]``; channel ``i * block + j`` holds the tile's voxel ``(i, j)``.
    """
    return F.pixel_unshuffle(x.unsqueeze(1), block)


@space_to_depth.register_fake
def _space_to_depth_shape(x: torch.Tensor, block: int) -> torch.Tensor:
    return x.new_empty((x.shape[0], block * block, x.shape[1] // block, x.shape[2] // block))


def _shuffle_for_export(x: torch.Tensor, spatial_dims: int, r: int) -> torch.Tensor:
    """:func:`pixel_shuffle` written for runtimes: ``DepthToSpace`` for the two inner axes, whole-plane moves for the
    outer ones.

    Channel ``c * r**D + i_0 * r**(D-1) + ... + i_{D-1}`` at position ``(a_0, ..., a_{D-1})`` goes to channel ``c``
    at ``(a_0 * r + i_0, ...)``. Each outer step ``d`` moves ``a_d`` in front of the remaining block offsets
    ``(i_d, ..., i_{D-1})`` (a rank-4 transpose of blocks of ``prod(S[d+1:])`` elements; the axes already placed are
    merged into the leading dimension); the last two axes interleave element by element in one
    ``pixel_shuffle`` of a single output channel, which exports as ``DepthToSpace``. onnxruntime 1.31 runs that in
    one pass whatever its thread count, where a transpose that moves single elements of the last axis is 5x slower
    on two threads than on one (docs/benchmarks.md).
    """
    b, channels = x.shape[0], x.shape[1]
    sizes = [x.shape[2 + d] for d in range(spatial_dims)]
    c = channels // int(r**spatial_dims)
    lead = b * c
    for d in range(spatial_dims - 2):
        rest = 1
        for e in range(d + 1, spatial_dims):
            rest *= sizes[e]
        x = x.reshape(lead, int(r ** (spatial_dims - d)), sizes[d], rest).transpose(1, 2)
        lead = lead * sizes[d] * r
    x = F.pixel_shuffle(x.reshape(lead, r * r, sizes[-2], sizes[-1]), r)
    return x.reshape([b, c] + [s * r for s in sizes])


def _unshuffle_for_export(x: torch.Tensor, spatial_dims: int, r: int) -> torch.Tensor:
    """:func:`pixel_unshuffle` written for runtimes: the steps of :func:`_shuffle_for_export` undone in reverse
    order, ``SpaceToDepth`` (:func:`space_to_depth`) for the two inner axes."""
    b, c = x.shape[0], x.shape[1]
    sizes = [x.shape[2 + d] // r for d in range(spatial_dims)]
    lead = b * c
    for d in range(spatial_dims - 2):
        lead *= sizes[d] * r
    x = space_to_depth(x.reshape(lead, sizes[-2] * r, sizes[-1] * r), r)
    for d in range(spatial_dims - 3, -1, -1):
        lead = b * c
        for e in range(d):
            lead *= sizes[e] * r
        rest = 1
        for e in range(d + 1, spatial_dims):
            rest *= sizes[e]
        x = x.reshape(lead, sizes[d], int(r ** (spatial_dims - d)), rest).transpose(1, 2)
    return x.reshape([b, c * int(r**spatial_dims)] + sizes)


def channel_map(weight: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """One linear map of the channel vector at every position of every batch item: ``weight @ x[b] + bias``.

    A batched matrix product with the weight expanded over the batch (a view, no copy). ``weight @ x`` itself
    (``torch.matmul`` of a matrix and a batch) folds the batch into the positions instead: it copies ``x``
    transposed to ``[B * N, C]`` in the forward pass and its gradient back in the backward pass, a full-size
    transposing copy each way (docs/benchmarks.md).

    Args:
        weight: ``[C_out, C_in]``.
        x: ``[B, C_in, N]``: channels, then positions flattened.
        bias: ``[C_out]``, or None for no bias (``bmm``; ``baddbmm`` first copies the broadcast bias into the whole
            output).

    Returns:
        ``[B, C_out, N]``.
    """
    w = weight.unsqueeze(0).expand(x.shape[0], -1, -1)
    if bias is None:
        return torch.bmm(w, x)
    return torch.baddbmm(bias.reshape(1, -1, 1), w, x)


class _PointwiseForward:
    """Forward of a kernel-size-1 convolution as one batched matrix product in eager mode.

    Same weights, same result as the convolution. CPU convolution backends (oneDNN) handle 1x1 kernels on large
    volumes poorly: in training, above all in the backward pass, ``baddbmm`` over the flattened positions makes a
    step about 1.6x faster; in inference, a 9->8 or 8->1 channel map over a full-resolution 48x64x48 batch of
    two takes 14-16 ms as a convolution and 0.1-0.5 ms as ``baddbmm`` (docs/architecture.md).
    While scripting, tracing or exporting (TorchScript, ONNX, torch.export) the regular convolution runs, so
    exported graphs hold plain Conv nodes that edge runtimes know; ``torch.compile`` takes the eager product.

    ``skip_bias`` (set by :func:`skip_bias_before`) leaves the bias out of the eager product: ``bmm`` instead of
    ``baddbmm``, which first copies the broadcast bias into the whole output.
    """

    skip_bias = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self._conv_forward(x, self.weight, self.bias)  # type: ignore[attr-defined]
        else:
            if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting():
                return self._conv_forward(x, self.weight, self.bias)  # type: ignore[attr-defined]
            b, c = x.shape[0], x.shape[1]
            bias = None if self.skip_bias else self.bias
            y = channel_map(self.weight.reshape(self.out_channels, c), x.reshape(b, c, -1), bias)
            return y.reshape([b, self.out_channels] + list(x.shape[2:]))


class PointwiseConv2d(_PointwiseForward, nn.Conv2d):
    """``nn.Conv2d`` with ``kernel_size=1``, trained through a batched matrix product (see ``_PointwiseForward``).

    Args:
        in_channels: input channels ``C_in``.
        out_channels: output channels ``C_out``.
        bias: whether to add a learned bias.

    Shapes:
        ``[B, in_channels, H, W] -> [B, out_channels, H, W]``.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size=1, bias=bias)


class PointwiseConv3d(_PointwiseForward, nn.Conv3d):
    """``nn.Conv3d`` with ``kernel_size=1``, trained through a batched matrix product (see ``_PointwiseForward``).

    Args:
        in_channels: input channels ``C_in``.
        out_channels: output channels ``C_out``.
        bias: whether to add a learned bias.

    Shapes:
        ``[B, in_channels, H, W, D] -> [B, out_channels, H, W, D]``.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        nn.Conv3d.__init__(self, in_channels, out_channels, kernel_size=1, bias=bias)


def conv1x1(spatial_dims: int, in_channels: int, out_channels: int, bias: bool = True) -> nn.Module:
    """A kernel-size-1 convolution: a linear map of the channel vector at every position, shared over positions.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: input channels.
        out_channels: output channels.
        bias: whether to add a learned bias.

    Returns:
        A :class:`PointwiseConv2d` or :class:`PointwiseConv3d`, mapping ``[B, in_channels, *S]`` to
        ``[B, out_channels, *S]``.

    Raises:
        ValueError: when ``spatial_dims`` is not 2 or 3.
    """
    if spatial_dims == 2:
        return PointwiseConv2d(in_channels, out_channels, bias=bias)
    if spatial_dims == 3:
        return PointwiseConv3d(in_channels, out_channels, bias=bias)
    raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")


def skip_bias_before(conv: nn.Module, norm: nn.Module) -> None:
    """Leave out ``conv``'s bias where ``norm``, applied next, removes it anyway.

    An instance norm without running statistics subtracts each channel's mean over the positions of each sample, and
    a per-channel bias only moves that mean: ``norm(W x + b) = norm(W x)``, in training and in inference. Its gradient
    is zero. So the bias is frozen (``requires_grad`` off: the optimiser and DistributedDataParallel pass it by) and
    the eager forward skips adding it (``skip_bias``), which saves a full pass over the output in the forward and the
    sum over positions in the backward. The parameter stays, so checkpoints keep their keys, and scripted or exported
    graphs still add it, with the same result. The same holds for a group norm with one channel per group
    (:class:`InstanceNorm`). Any other ``norm`` (batch norm, group norm of several channels per group, none) leaves
    ``conv`` unchanged.

    Args:
        conv: a :func:`conv1x1` layer.
        norm: the normalisation applied to ``conv``'s output.
    """
    cancels = (isinstance(norm, nn.modules.instancenorm._InstanceNorm) and not norm.track_running_stats) or (
        isinstance(norm, nn.GroupNorm) and norm.num_groups == norm.num_channels
    )
    if cancels and isinstance(conv, _PointwiseForward) and getattr(conv, "bias", None) is not None:
        conv.skip_bias = True
        conv.bias.requires_grad_(False)


def _shift(x: torch.Tensor, dim: int, offset: int) -> torch.Tensor:
    """Move ``x`` by ``offset`` (+1 or -1) positions along ``dim``, filling the vacated slice with zeros.

    Zero fill, not ``torch.roll``: a roll would wrap voxels from one border of the patch to the opposite one.
    Written as narrow + constant pad so that the backward pass only touches this group's own voxels.
    """
    n = x.shape[dim]
    # F.pad lists (before, after) pairs from the last dim backwards
    pad: list[int] = [0] * (2 * (x.dim() - 2))
    slot = 2 * (x.dim() - 1 - dim)
    if offset > 0:
        pad[slot] = 1
        kept = x.narrow(dim, 0, n - 1)
    else:
        pad[slot + 1] = 1
        kept = x.narrow(dim, 1, n - 1)
    # for n == 1 the kept slice is empty and the result is all zeros, with no shape-dependent branch (ONNX export)
    return F.pad(kept, pad)


def face_neighbours(x: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """Every channel at each position and at its ``2 * spatial_dims`` face neighbours, stacked as channels.

    Parameter-free, like :class:`SpatialShift`, but it copies instead of moving groups: a kernel-size-1 convolution
    after it sees all of ``x``'s channels at the position and at each neighbour. Meant for few channels (a raw image
    at full resolution), where copies are cheap.

    Args:
        x: ``[B, C, *S]`` with ``len(S) == spatial_dims``.
        spatial_dims: number of spatial dimensions.

    Returns:
        ``[B, C * (2 * spatial_dims + 1), *S]``: ``x`` itself, then ``x`` shifted by ``+1`` and ``-1`` along each
        spatial axis in turn (position ``p`` holds the values of ``p - 1`` and ``p + 1``), zero-filled at the border.
    """
    parts = [x]
    for axis in range(spatial_dims):
        parts.append(_shift(x, 2 + axis, 1))
        parts.append(_shift(x, 2 + axis, -1))
    return torch.cat(parts, dim=1)


def sum_face_neighbours(x: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """Sum a channel group taken at each position and one taken at each of its ``2 * spatial_dims`` face neighbours.

    After a kernel-size-1 convolution to ``C * (2 * spatial_dims + 1)`` channels this is a kernel-size-1
    convolution of :func:`face_neighbours` of its input (a learned 7-point stencil in 3D), without building that
    ``2 * spatial_dims + 1`` times wider input: each group is computed at every position and moved where it is used.

    Args:
        x: ``[B, C * (2 * spatial_dims + 1), *S]``: group 0 for the position itself, then groups for the neighbours
            in :func:`face_neighbours`' order (``-1`` and ``+1`` along each spatial axis in turn).
        spatial_dims: number of spatial dimensions.

    Returns:
        ``[B, C, *S]``: at position ``p``, group 0 at ``p`` plus group ``2 * axis + 1`` at ``p - e_axis`` and
        group ``2 * axis + 2`` at ``p + e_axis``, zero beyond the border.
    """
    groups = torch.chunk(x, 2 * spatial_dims + 1, dim=1)
    y = groups[0]
    for axis in range(spatial_dims):
        y = y + _shift(groups[2 * axis + 1], 2 + axis, 1) + _shift(groups[2 * axis + 2], 2 + axis, -1)
    return y


class SpatialShift(nn.Module):
    """Parameter-free shift of channel groups by one position along every spatial axis, in both directions.

    The channels are split into ``2 * spatial_dims`` shifted groups of ``channels // (2 * spatial_dims + 1)`` each
    and one unshifted group with the rest. After the shift, position ``p`` holds features of ``p`` and of its
    ``2 * spatial_dims`` face neighbours, and a kernel-size-1 convolution mixes them: together they act like a
    sparse 3^D convolution with no multiply-adds spent on the spatial part.

    Args:
        spatial_dims: number of spatial dimensions.
        channels: number of channels; at least ``2 * spatial_dims + 1``.

    Shapes:
        ``[B, channels, *S] -> [B, channels, *S]``.

    Raises:
        ValueError: when ``channels < 2 * spatial_dims + 1``.
    """

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        directions = 2 * spatial_dims
        if channels < directions + 1:
            raise ValueError(f"SpatialShift needs at least {directions + 1} channels, got {channels}.")
        self.spatial_dims = spatial_dims
        self.group = channels // (directions + 1)
        self.directions = directions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: tensor of shape ``[B, C, *S]`` with ``len(S) == spatial_dims``.

        Returns:
            Tensor of shape ``[B, C, *S]``: group ``i < 2 * spatial_dims`` shifted by ``+1`` (even ``i``) or ``-1``
            (odd ``i``) along spatial axis ``i // 2``, zero-filled at the border; the remaining channels unchanged.
        """
        g = self.group
        sizes: list[int] = [g] * self.directions + [x.shape[1] - g * self.directions]
        # split (not slicing): its backward is a single concatenation instead of one full-size buffer per group
        groups = torch.split(x, sizes, dim=1)
        parts: list[torch.Tensor] = []
        for i in range(self.directions):
            parts.append(_shift(groups[i], 2 + i // 2, 1 if i % 2 == 0 else -1))
        parts.append(groups[self.directions])
        return torch.cat(parts, dim=1)


class ChannelMixBlock(nn.Module):
    """Residual block of two kernel-size-1 convolutions, optionally after a :class:`SpatialShift`.

    ``y = act(x + norm(W2 act(norm(W1 shift(x)))))``. With ``shift=False`` it sees a single position, which is what
    an unshuffle pyramid alone offers.

    Args:
        spatial_dims: number of spatial dimensions.
        channels: input and output channels.
        expansion: hidden width as a multiple of ``channels``.
        act: activation type and arguments (MONAI ``get_act_layer`` format).
        norm: normalisation type and arguments (MONAI ``get_norm_layer`` format).
        shift: whether to shift channel groups to the neighbours before mixing.

    Shapes:
        ``[B, channels, *S] -> [B, channels, *S]``.
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        expansion: float = 2.0,
        act: str | tuple = DEFAULT_ACT,
        norm: str | tuple = DEFAULT_NORM,
        shift: bool = True,
    ) -> None:
        super().__init__()
        hidden = max(1, int(round(channels * expansion)))
        self.shift = SpatialShift(spatial_dims, channels) if shift else nn.Identity()
        self.conv1 = conv1x1(spatial_dims, channels, hidden)
        self.norm1 = norm_layer(norm, spatial_dims, hidden)
        self.act1 = get_act_layer(act)
        self.conv2 = conv1x1(spatial_dims, hidden, channels)
        self.norm2 = norm_layer(norm, spatial_dims, channels)
        self.act2 = get_act_layer(act)
        skip_bias_before(self.conv1, self.norm1)
        skip_bias_before(self.conv2, self.norm2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: tensor of shape ``[B, channels, *S]``.

        Returns:
            Tensor of shape ``[B, channels, *S]``.
        """
        h = self.act1(self.norm1(self.conv1(self.shift(x))))
        h = self.norm2(self.conv2(h))
        return self.act2(x + h)


class UnshuffleDown(nn.Module):
    """Downsampling by pixel-unshuffle (factor 2) followed by a kernel-size-1 projection.

    Equivalent in reach to a stride-2, kernel-2 convolution: the ``2**D`` voxels of each aligned block are stacked
    in channels and mixed by ``W``.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: input channels.
        out_channels: output channels.
        act: activation type and arguments (MONAI ``get_act_layer`` format).
        norm: normalisation type and arguments (MONAI ``get_norm_layer`` format).

    Shapes:
        ``[B, in_channels, *S] -> [B, out_channels, *(s // 2 for s in S)]``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        act: str | tuple = DEFAULT_ACT,
        norm: str | tuple = DEFAULT_NORM,
    ) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.proj = conv1x1(spatial_dims, in_channels * 2**spatial_dims, out_channels)
        self.norm = norm_layer(norm, spatial_dims, out_channels)
        self.act = get_act_layer(act)
        skip_bias_before(self.proj, self.norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: tensor of shape ``[B, in_channels, *S]``; every size in ``S`` even.

        Returns:
            Tensor of shape ``[B, out_channels, *(s // 2 for s in S)]``.

        Raises:
            ValueError: when a spatial size is odd (from :func:`pixel_unshuffle`).
        """
        return self.act(self.norm(self.proj(pixel_unshuffle(x, self.spatial_dims, 2))))


class ShuffleUp(nn.Module):
    """Upsampling by a kernel-size-1 projection to ``out_channels * 2**D`` channels, then pixel-shuffle (factor 2).

    Equivalent in reach to a stride-2, kernel-2 transposed convolution, without its learned spatial kernel.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: input channels.
        out_channels: output channels.

    Shapes:
        ``[B, in_channels, *S] -> [B, out_channels, *(2 * s for s in S)]``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.proj = conv1x1(spatial_dims, in_channels, out_channels * 2**spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: tensor of shape ``[B, in_channels, *S]``.

        Returns:
            Tensor of shape ``[B, out_channels, *(2 * s for s in S)]``.
        """
        return pixel_shuffle(self.proj(x), self.spatial_dims, 2)


class GlobalContext(nn.Module):
    """Adds a transform of the global mean feature to every position, so each output sees the whole input.

    ``y = x + W2 act(W1 mean_S(x))``: the mean is parameter-free pooling, ``W1``/``W2`` are kernel-size-1 convolutions
    applied to the ``[B, C, 1, ..., 1]`` pooled tensor. ``W2`` starts at zero, so the block starts as the identity.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        channels: input and output channels.
        act: activation between ``W1`` and ``W2`` (MONAI ``get_act_layer`` format).

    Shapes:
        ``[B, channels, *S] -> [B, channels, *S]``.
    """

    def __init__(self, spatial_dims: int, channels: int, act: str | tuple = DEFAULT_ACT) -> None:
        super().__init__()
        self.reduce_dims: list[int] = list(range(2, 2 + spatial_dims))
        self.conv1 = conv1x1(spatial_dims, channels, channels)
        self.act = get_act_layer(act)
        self.conv2 = conv1x1(spatial_dims, channels, channels)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: tensor of shape ``[B, channels, *S]``.

        Returns:
            Tensor of shape ``[B, channels, *S]``: ``x`` plus a per-sample, per-channel offset.
        """
        g = x.mean(dim=self.reduce_dims, keepdim=True)
        return x + self.conv2(self.act(self.conv1(g)))


class FiLM(nn.Module):
    """Feature-wise linear modulation: per-channel scale and shift predicted from a conditioning vector.

    ``y = x * (1 + gamma(c)) + beta(c)``. The projection starts at zero, so the block starts as the identity and the
    unconditioned network is recovered at initialisation.

    Args:
        spatial_dims: number of spatial dimensions of ``x``.
        channels: channels of ``x``.
        cond_channels: length of the conditioning vector ``c``.

    Shapes:
        ``x [B, channels, *S]``, ``c [B, cond_channels]`` ``-> [B, channels, *S]``.
    """

    def __init__(self, spatial_dims: int, channels: int, cond_channels: int) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.proj = nn.Linear(cond_channels, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """
        Args:
            x: tensor of shape ``[B, channels, *S]`` with ``len(S) == spatial_dims``.
            cond: conditioning vector ``c`` of shape ``[B, cond_channels]``.

        Returns:
            Tensor of shape ``[B, channels, *S]``.

        Raises:
            ValueError: when ``cond`` is None.
        """
        if cond is None:
            raise ValueError("FiLM needs a conditioning vector; got None.")
        params = self.proj(cond)
        for _ in range(self.spatial_dims):
            params = params.unsqueeze(-1)
        gamma, beta = params.chunk(2, dim=1)
        return x * (1.0 + gamma) + beta


class ConditionedPointwise(nn.Module):
    """A kernel-size-1 convolution whose weight each item's conditioning vector sets: a prompt-controlled layer.

    ``y[b] = (W + reshape(P c[b])) x[b]`` at every position, one ``[C_out, C_in]`` matrix per item. With one decoder
    shared by every prompt, such layers let each prompt choose its own linear maps of the shared features, as the
    text-controlled heads of the CLIP-Driven Universal Model (Liu et al., 2023) do for many structures, where FiLM
    (:class:`FiLM`) only rescales each channel before a map shared by all. ``P`` starts at zero, so the layer starts
    as the plain convolution ``W`` (initialised as ``nn.Conv``'s weight). No bias: it feeds an instance norm, which
    would remove it.

    Args:
        spatial_dims: number of spatial dimensions of ``x``.
        in_channels: channels of ``x``.
        out_channels: channels of the output.
        cond_channels: length of the conditioning vector ``c``.

    Shapes:
        ``x [B, in_channels, *S]``, ``c [B, cond_channels]`` ``-> [B, out_channels, *S]``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, cond_channels: int) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.in_channels, self.out_channels = in_channels, out_channels
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.proj = nn.Linear(cond_channels, out_channels * in_channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """
        Args:
            x: tensor of shape ``[B, in_channels, *S]`` with ``len(S) == spatial_dims``.
            cond: conditioning vectors ``c`` of shape ``[B, cond_channels]``, one per item of ``x``.

        Returns:
            Tensor of shape ``[B, out_channels, *S]``.

        Raises:
            ValueError: when ``cond`` is None.
        """
        if cond is None:
            raise ValueError("ConditionedPointwise needs a conditioning vector; got None.")
        b = x.shape[0]
        weight = self.weight.unsqueeze(0) + self.proj(cond).reshape(b, self.out_channels, self.in_channels)
        y = torch.bmm(weight, x.reshape(b, self.in_channels, -1))
        return y.reshape([b, self.out_channels] + list(x.shape[2:]))


class ConditionEmbedding(nn.Module):
    """Turns a diffusion timestep and/or a text embedding into one conditioning vector.

    The timestep gets MONAI's sinusoidal embedding followed by a two-layer MLP (as in Ho et al., 2020); the text
    embedding (e.g. a CLIP text-tower output) gets a linear projection; the two are summed.

    Args:
        cond_channels: length of the output vector.
        use_timestep: whether a timestep is expected.
        text_dim: length of the text embedding, or ``None`` for no text conditioning.
        act: activation of the timestep MLP.

    Shapes:
        ``timesteps [B]`` (int or float), ``text [B, text_dim]`` or ``[B, 1, text_dim]`` ``-> [B, cond_channels]``.

    Raises:
        ValueError: when ``use_timestep`` is False and ``text_dim`` is None.
    """

    def __init__(
        self, cond_channels: int, use_timestep: bool = True, text_dim: int | None = None, act: str | tuple = "swish"
    ) -> None:
        super().__init__()
        if not use_timestep and text_dim is None:
            raise ValueError("ConditionEmbedding needs a timestep, a text embedding, or both.")
        self.cond_channels = cond_channels
        self.use_timestep = use_timestep
        self.use_text = text_dim is not None
        self.time_mlp = (
            nn.Sequential(
                nn.Linear(cond_channels, cond_channels), get_act_layer(act), nn.Linear(cond_channels, cond_channels)
            )
            if use_timestep
            else nn.Identity()
        )
        self.text_proj = nn.Linear(text_dim, cond_channels) if text_dim is not None else nn.Identity()

    def forward(self, timesteps: torch.Tensor | None, text: torch.Tensor | None) -> torch.Tensor:
        """
        Args:
            timesteps: diffusion timesteps of shape ``[B]`` (any shape with ``B`` elements; it is flattened), int
                or float; ignored (may be None) without timestep conditioning.
            text: text embeddings of shape ``[B, text_dim]`` or ``[B, 1, text_dim]``; ignored (may be None)
                without text conditioning.

        Returns:
            Conditioning vectors of shape ``[B, cond_channels]``: the sum of the timestep and text terms in use.

        Raises:
            ValueError: when the network is conditioned on timesteps or text and that input is None.
        """
        cond: torch.Tensor | None = None
        if self.use_timestep:
            if timesteps is None:
                raise ValueError("this network is timestep-conditioned: pass `timesteps` of shape [B].")
            t = timesteps.reshape(-1)
            cond = self.time_mlp(get_timestep_embedding(t, self.cond_channels))
        if self.use_text:
            if text is None:
                raise ValueError("this network is text-conditioned: pass `context` of shape [B, text_dim].")
            if text.dim() == 3:
                text = text.squeeze(1)
            emb = self.text_proj(text)
            cond = emb if cond is None else cond + emb
        assert cond is not None
        return cond
