"""SAM2Teacher on a random-weight SAM2: volume shapes and ranges, prompt kinds, 2D images, refusals, frozen."""

from __future__ import annotations

import numpy as np
import pytest

from bundle.teacher import SAM2Teacher, TeacherCache
from tests.helpers.sam2 import CONFIG, SIZE


def test_teacher_volume_shapes_ranges_and_unprompted_slices(teacher, case, caplog):
    image, mask = case
    with caplog.at_level("INFO"):
        probs, iou = teacher.volume(image, mask)
    assert "Image embeddings computed" not in caplog.text  # SAM2's per-slice progress lines are dropped
    assert probs.shape == image.shape and probs.dtype == np.float32
    assert iou.shape == (image.shape[2],)
    assert 0.0 <= probs.min() and probs.max() <= 1.0
    present = mask.any(axis=(0, 1))
    assert present.any() and not present.all()
    assert np.isfinite(iou[present]).all() and np.isnan(iou[~present]).all()
    assert (probs[:, :, ~present] == 0).all()
    assert probs[:, :, present].std() > 0  # SAM2 answered on the prompted slices


def test_teacher_is_frozen_and_in_eval_mode(teacher):
    assert not any(p.requires_grad for p in teacher.model.parameters())
    assert not teacher.model.training


def test_missing_or_mismatched_checkpoint_is_a_clear_error(tmp_path, checkpoint):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        SAM2Teacher(tmp_path / "absent.pt", CONFIG, image_size=SIZE)
    with pytest.raises(RuntimeError, match="does not fit SAM2 config"):
        SAM2Teacher(checkpoint, "configs/sam2.1/sam2.1_hiera_s.yaml", image_size=SIZE)
    with pytest.raises(ValueError, match="multiple of 16"):
        SAM2Teacher(checkpoint, CONFIG, image_size=250)


def test_bad_volumes_are_refused(teacher):
    with pytest.raises(ValueError, match="same"):
        teacher.volume(np.zeros((4, 4, 4)), np.zeros((4, 4, 3), bool))
    with pytest.raises(ValueError, match="NaN"):
        teacher.volume(np.full((4, 4, 4), np.nan), np.ones((4, 4, 4), bool))


def test_point_prompts_are_seeded_and_keyed(checkpoint, case):
    image, mask = case
    box = SAM2Teacher(checkpoint, CONFIG, image_size=SIZE, prompt="box")
    points = SAM2Teacher(checkpoint, CONFIG, image_size=SIZE, prompt="points", num_points=2, seed=3)
    both = SAM2Teacher(checkpoint, CONFIG, image_size=SIZE, prompt="box+points", num_points=2, seed=3)
    present = mask.any(axis=(0, 1))
    outputs = {}
    for name, t in (("box", box), ("points", points), ("box+points", both)):
        probs, iou = t.volume(image, mask)
        assert probs.shape == image.shape and 0 <= probs.min() and probs.max() <= 1
        assert np.isfinite(iou[present]).all() and np.isnan(iou[~present]).all()  # the same slices are prompted
        outputs[name] = probs
    assert not np.allclose(outputs["box"], outputs["points"])  # SAM2 saw other prompts
    assert not np.allclose(outputs["points"], outputs["box+points"])
    np.testing.assert_array_equal(points.volume(image, mask)[0], outputs["points"])  # the same seed, the same points
    other_seed = SAM2Teacher(checkpoint, CONFIG, image_size=SIZE, prompt="points", num_points=2, seed=4)
    keys = {TeacherCache.key("c", 1, t.settings) for t in (box, points, both, other_seed)}
    assert len(keys) == 4  # each prompt setting has its own cache entries
    # settings that do not change a box prompt's output do not split its cache
    assert box.settings == SAM2Teacher(checkpoint, CONFIG, image_size=SIZE, prompt="box", seed=9).settings
    with pytest.raises(ValueError, match="is not a valid value|Unsupported option"):
        SAM2Teacher(checkpoint, CONFIG, image_size=SIZE, prompt="scribble")
    with pytest.raises(ValueError, match="num_points"):
        SAM2Teacher(checkpoint, CONFIG, image_size=SIZE, prompt="points", num_points=0)


def test_volume_box_prompts_every_slice_of_the_3d_extent(checkpoint, case):
    """A noisy (e.g. predicted) mask with a missing slice: per-slice boxes skip it, the 3D box covers it."""
    image, mask = case
    holed = mask.copy()
    ks = np.nonzero(mask.any(axis=(0, 1)))[0]
    gap = int(ks[len(ks) // 2])
    holed[:, :, gap] = False
    per_slice = SAM2Teacher(checkpoint, CONFIG, image_size=SIZE, box_mode="slice")
    per_volume = SAM2Teacher(checkpoint, CONFIG, image_size=SIZE, box_mode="volume")
    _, iou_slice = per_slice.volume(image, holed)
    probs, iou_volume = per_volume.volume(image, holed)
    assert np.isnan(iou_slice[gap]) and np.isfinite(iou_volume[gap])
    assert np.isfinite(iou_volume[ks.min() : ks.max() + 1]).all()
    assert np.isnan(np.delete(iou_volume, np.arange(ks.min(), ks.max() + 1))).all()  # nothing outside the extent
    assert per_slice.settings != per_volume.settings
    with pytest.raises(ValueError, match="Unsupported option .cube."):
        SAM2Teacher(checkpoint, CONFIG, image_size=SIZE, box_mode="cube")


def test_a_2d_image_is_one_slice(teacher, case):
    image, mask = case
    k = int(np.nonzero(mask.any(axis=(0, 1)))[0][0])
    probs, iou = teacher.volume(image[:, :, k], mask[:, :, k])
    assert probs.shape == image.shape[:2] and iou.shape == (1,) and np.isfinite(iou).all()
    np.testing.assert_allclose(probs, teacher.volume(image, mask)[0][:, :, k], atol=1e-5)  # as the slice of a volume
    empty, none = teacher.volume(image[:, :, k], np.zeros_like(mask[:, :, k]))
    assert (empty == 0).all() and np.isnan(none).all()
