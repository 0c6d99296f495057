"""The teacher's training transforms (bundle.transforms.teacher) on a 2D image."""

from __future__ import annotations

import numpy as np
import torch

from tests.helpers.images import meta_image


def test_teacher_targets_in_2d(tmp_path, teacher, case):
    from bundle.transforms import TeacherTargetsd

    image, mask = case
    k = int(np.nonzero(mask.any(axis=(0, 1)))[0][0])
    label = torch.as_tensor(mask[:, :, k].astype(np.uint8))[None]
    targets = TeacherTargetsd("image", teacher, tmp_path / "cache", class_values=[1, 2], iou_threshold=0.0)
    out = targets({"image": meta_image(image[:, :, k], "slice.nii.gz"), "label": label})
    assert out["teacher"].shape == (2, *image.shape[:2]) and out["teacher_weight"].shape == out["teacher"].shape
    assert (out["teacher_weight"][0] == 1).all() and (out["teacher_weight"][1] == 0).all()  # class 2 absent here
    assert float(out["supervised"]) == 1.0
