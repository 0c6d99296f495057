"""SelectTeacherd: the teacher channel of the prompted class, and a clear error for several prompts."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor

from bundle.transforms import SelectTeacherd


def test_the_prompted_class_s_channel_is_kept():
    teacher = torch.stack([torch.full((4, 4, 4), float(v)) for v in (1, 2, 3)])
    out = SelectTeacherd(["teacher"], class_values=[1, 2, 3])({"teacher": teacher, "prompt_class": 2})
    assert out["teacher"].shape == (1, 4, 4, 4) and torch.all(out["teacher"] == 2)


def test_several_prompts_per_item_name_the_file():
    teacher = MetaTensor(torch.rand(2, 4, 4, 4), meta={"filename_or_obj": "/cache/case_003_teacher.nii.gz"})
    select = SelectTeacherd(["teacher"], class_values=[1, 2])
    with pytest.raises(ValueError, match=r"case_003_teacher.nii.gz: the teacher term needs one prompt per item, got 2"):
        select({"teacher": teacher, "prompt_class": torch.tensor([2, 1])})
