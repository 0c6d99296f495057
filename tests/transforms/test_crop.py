"""RandWindowCropd: each item padded and cropped to its own window."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from bundle.transforms import RandWindowCropd


def _item(shape=(6, 40, 36), window=None):
    label = torch.zeros((1, *shape), dtype=torch.uint8)
    label[0, 2:4, 30:34, 5:9] = 2  # a small structure far from the centre
    image = torch.arange(np.prod(shape), dtype=torch.float32).reshape(1, *shape)  # every position distinct
    item = {"image": MetaTensor(image), "label": MetaTensor(label)}
    if window is not None:
        item["window"] = window
    return item


def test_the_item_s_window_pads_and_crops_every_key():
    crop = RandWindowCropd(["image", "label", "teacher"], roi_size=(16, 16, 16), allow_missing_keys=True)
    out = crop(_item(window=[16, 32, 32]))
    assert out["image"].shape == out["label"].shape == (1, 16, 32, 32)
    # without a window, roi_size; a collated window (a tensor) is read too
    assert crop(_item())["image"].shape == (1, 16, 16, 16)
    assert crop(_item(window=torch.tensor([8, 16, 32])))["label"].shape == (1, 8, 16, 32)


def test_class_sampling_finds_a_small_structure_and_is_reproducible():
    crop = RandWindowCropd(["image", "label"], (16, 16, 16), sampling="classes", num_classes=3)
    crop.set_random_state(seed=0)
    hits = [int((crop(_item(window=[8, 16, 16]))["label"] == 2).any()) for _ in range(30)]
    assert sum(hits) >= 10  # background, class 1 (absent: skipped) and class 2: about half the crops
    crop.set_random_state(seed=5)
    first = crop(_item(window=[8, 16, 16]))["image"]
    crop.set_random_state(seed=5)
    assert torch.equal(first, crop(_item(window=[8, 16, 16]))["image"])


def test_refusals():
    with pytest.raises(ValueError, match="sampling"):
        RandWindowCropd("image", (16, 16, 16), sampling="grid")
    with pytest.raises(ValueError, match="num_classes"):
        RandWindowCropd("image", (16, 16, 16), sampling="classes")
    with pytest.raises(ValueError, match="2 axes"):
        RandWindowCropd(["image", "label"], (16, 16, 16))(_item(window=[16, 16]))


def test_random_sampling_matches_monai_s_pad_and_crop():
    from monai.transforms import RandSpatialCropd, SpatialPadd

    crop = RandWindowCropd(["image", "label"], (16, 16, 16))
    crop.set_random_state(seed=1)
    reference = RandSpatialCropd(["image", "label"], (8, 32, 32), random_size=False)
    reference.set_random_state(seed=1)
    item = _item(window=[8, 32, 32])
    expected = reference(SpatialPadd(["image", "label"], (8, 32, 32))(dict(item)))  # (Compose would reseed it)
    out = crop(dict(item))
    assert np.array_equal(out["image"].numpy(), expected["image"].numpy())
