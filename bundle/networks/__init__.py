"""SegOne networks: only kernel-size-1 (channel) convolutions, spatial context from data movement."""

from bundle.networks.blocks import (
    ChannelMixBlock,
    ConditionedPointwise,
    ConditionEmbedding,
    FiLM,
    GlobalContext,
    ShuffleUp,
    SpatialShift,
    UnshuffleDown,
    conv1x1,
    face_neighbours,
    pixel_unshuffle,
    sum_face_neighbours,
)
from bundle.networks.segone import SegOne

__all__ = [
    "SegOne",
    "ChannelMixBlock",
    "ConditionedPointwise",
    "ConditionEmbedding",
    "FiLM",
    "GlobalContext",
    "ShuffleUp",
    "SpatialShift",
    "UnshuffleDown",
    "conv1x1",
    "face_neighbours",
    "pixel_unshuffle",
    "sum_face_neighbours",
]
