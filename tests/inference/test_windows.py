"""SpacingWindowInferer: sliding windows that follow each volume's spacing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInferer

from bundle.inference import SpacingWindowInferer, volume_spacing


def _volume(spacing, shape=(1, 1, 10, 40, 36)):
    affine = torch.as_tensor(np.diag([*spacing, 1.0]), dtype=torch.float64)
    return MetaTensor(torch.randn(shape), affine=affine)


class _Recorder(torch.nn.Module):
    """Records the window shapes it is called with; a spatially varying output, so blending matters."""

    def __init__(self):
        super().__init__()
        self.shapes = set()

    def forward(self, x):
        self.shapes.add(tuple(x.shape[2:]))
        return torch.cat([x, x.cumsum(-1)], 1)


def test_volume_spacing_of_a_metatensor_and_of_a_plain_tensor():
    assert volume_spacing(_volume((10.0, 1.5, 1.5))) == (10.0, 1.5, 1.5)
    assert volume_spacing(torch.zeros(1, 1, 4, 4, 4)) is None


def test_volume_spacing_refuses_a_batch_of_different_spacings():
    a, b = _volume((1.0, 1.0, 1.0)), _volume((1.0, 1.0, 5.0))
    batch = MetaTensor(torch.cat([a.as_tensor(), b.as_tensor()]), affine=torch.stack([a.affine, b.affine]))
    batch.is_batch = True
    with pytest.raises(ValueError, match="different voxel spacings"):
        volume_spacing(batch)


def test_a_thick_slice_volume_gets_the_planned_window_and_monai_s_result():
    image = _volume((10.0, 1.5, 1.5))
    net = _Recorder()
    inferer = SpacingWindowInferer((16, 16, 16), multiple=8, thick_ratio=3.0, overlap=0.25, mode="gaussian")
    assert inferer.window_for(image) == (8, 16, 16)  # 4096 voxels at most: 8 slices, then multiples of 8
    out = inferer(image, net)
    assert net.shapes == {(8, 16, 16)}
    expected = SlidingWindowInferer((8, 16, 16), overlap=0.25, mode="gaussian")(image.as_tensor(), _Recorder())
    assert torch.allclose(torch.as_tensor(out), expected)
    assert inferer.roi_size == (16, 16, 16)  # the call's window does not stay on the inferer


def test_near_isotropic_volumes_plain_tensors_and_the_rule_off_keep_roi_size():
    for image, ratio in [
        (_volume((1.0, 1.2, 1.0)), 3.0),
        (_volume((10.0, 1.5, 1.5)).as_tensor(), 3.0),
        (_volume((10.0, 1.5, 1.5)), 0.0),
    ]:
        net = _Recorder()
        SpacingWindowInferer((16, 16, 16), multiple=8, thick_ratio=ratio)(image, net)
        assert net.shapes == {(16, 16, 16)}
