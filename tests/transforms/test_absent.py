"""The "absent" rule: answers of at most a volume become background."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from bundle.transforms import DropSmallAnswersd, answer_thresholds_ml, voxel_volume_ml


def _label() -> MetaTensor:
    label = torch.zeros(1, 10, 10, 10, dtype=torch.uint8)
    label[0, :5, :5, :4] = 1  # 100 voxels
    label[0, 8:, 8:, 8] = 2  # 4 voxels, split in two components would not matter: the rule is on the whole answer
    label[0, 9, 0, 0] = 2  # 5 voxels in all
    return MetaTensor(label, affine=torch.diag(torch.tensor([2.0, 1.0, 1.0, 1.0])))  # 2 ul voxels


def test_classes_up_to_the_threshold_are_dropped_by_their_whole_volume():
    label = _label()
    out = DropSmallAnswersd("pred", min_volume_ml=0.01)({"pred": label})["pred"]  # class 2: 10 ul, class 1: 200 ul
    assert torch.equal(out == 1, label == 1) and not (out == 2).any()
    assert (label == 2).sum() == 5  # the input is not changed
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, label.affine)
    kept = DropSmallAnswersd("pred", min_volume_ml=0.0099)({"pred": label})["pred"]
    assert torch.equal(kept, label)
    gone = DropSmallAnswersd("pred", min_volume_ml=0.2)({"pred": label})["pred"]
    assert not gone.any()


def test_off_by_default_unit_voxels_without_geometry_and_bad_threshold():
    label = _label()
    assert DropSmallAnswersd("pred")({"pred": label})["pred"] is label
    plain = torch.as_tensor(np.asarray(label))  # no affine: 1 ul voxels, class 2 is 5 ul
    assert not (DropSmallAnswersd("pred", min_volume_ml=0.005)({"pred": plain})["pred"] == 2).any()
    assert (DropSmallAnswersd("pred", min_volume_ml=0.0049)({"pred": plain})["pred"] == 2).sum() == 5
    with pytest.raises(ValueError, match="min_volume_ml must be >= 0"):
        DropSmallAnswersd("pred", min_volume_ml=-1)


def test_one_threshold_per_class_value():
    label = _label()  # class 1: 200 ul, class 2: 10 ul
    out = DropSmallAnswersd("pred", min_volume_ml=[0.2, 0.0])({"pred": label})["pred"]
    assert not (out == 1).any() and torch.equal(out == 2, label == 2)
    out = DropSmallAnswersd("pred", min_volume_ml=[0.19])({"pred": label})["pred"]  # class 2 beyond the list: 0
    assert torch.equal(out, label)
    with pytest.raises(ValueError, match="min_volume_ml must be >= 0"):
        DropSmallAnswersd("pred", min_volume_ml=[0.1, -0.1])


def test_thresholds_scale_with_each_structures_training_volume():
    volumes = {"Liver": 1000.0, "anterior hippocampus": 1.0}
    names = ["liver", "anterior  hippocampus", "spleen"]
    assert answer_thresholds_ml(names, 0.0, 0.2, volumes) == pytest.approx([200.0, 0.2, 0.0])
    assert answer_thresholds_ml(names, 0.5, 0.2, volumes) == pytest.approx([200.0, 0.5, 0.5])  # at least min
    assert answer_thresholds_ml(names, 0.5, 0.2, None) == [0.5] * 3  # a model that records no volumes
    assert answer_thresholds_ml(names, 0.0, 0.0, volumes) == [0.0] * 3  # off
    with pytest.raises(ValueError, match="must be >= 0"):
        answer_thresholds_ml(names, 0.0, -0.1, volumes)


def test_voxel_volume_from_the_affine():
    assert voxel_volume_ml(_label()) == pytest.approx(0.002)
    area = MetaTensor(torch.zeros(1, 3, 3), affine=torch.diag(torch.tensor([2.0, 3.0, 5.0, 1.0])))
    assert voxel_volume_ml(area, 2) == pytest.approx(0.006)  # 2D: mm^2 / 1000
    assert voxel_volume_ml(torch.zeros(1, 3, 3, 3)) == pytest.approx(0.001)
