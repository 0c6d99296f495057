"""AddCoordinatesd: each voxel's position in its volume, appended to the image or kept apart for augmentation."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor

from bundle.transforms import AddCoordinatesd


def _image(shape=(1, 4, 5, 6)) -> MetaTensor:
    affine = torch.diag(torch.tensor([2.0, 1.0, 3.0, 1.0], dtype=torch.float64))
    return MetaTensor(torch.rand(shape) * 100, affine=affine)


def test_coordinates_run_from_minus_half_to_half_along_each_axis():
    image = _image()
    out = AddCoordinatesd("image")({"image": image})["image"]
    assert out.shape == (4, 4, 5, 6) and out.dtype == torch.float32
    assert torch.equal(out[:1], image)
    for axis, size in enumerate((4, 5, 6)):
        line = torch.linspace(-0.5, 0.5, size)
        view = [1, 1, 1]
        view[axis] = size
        assert torch.allclose(out[1 + axis].as_tensor(), line.reshape(view).expand(4, 5, 6), atol=1e-6)


def test_coordinates_in_their_own_key_carry_the_image_grid_and_leave_the_image_alone():
    image = _image((2, 3, 4, 5))
    item = {"image": image, "label": torch.zeros(1, 3, 4, 5)}
    out = AddCoordinatesd("image", coords_key="coords")(item)
    assert out["image"] is image and "coords" not in item  # the input item is not modified
    coords = out["coords"]
    assert isinstance(coords, MetaTensor) and coords.shape == (3, 3, 4, 5)
    assert torch.equal(coords.affine, image.affine)


def test_two_dimensional_images_get_two_channels():
    out = AddCoordinatesd("image")({"image": torch.zeros(1, 3, 7)})["image"]
    assert out.shape == (3, 3, 7)
    assert torch.allclose(out[2, 0], torch.linspace(-0.5, 0.5, 7), atol=1e-6)


def test_one_image_key_only_and_missing_keys_only_when_allowed():
    with pytest.raises(ValueError, match="one image key"):
        AddCoordinatesd(["image", "label"])
    assert AddCoordinatesd("image", allow_missing_keys=True)({"label": 1}) == {"label": 1}
    with pytest.raises(KeyError):
        AddCoordinatesd("image")({"label": 1})
