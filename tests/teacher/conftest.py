"""Fixtures of the SAM2 teacher tests: a SAM2.1 tiny with random weights saved as a checkpoint by the test (the
real loading path), the teacher built from it, a phantom case, and the released model as a student."""

from __future__ import annotations

import pytest
import torch

from bundle.teacher import SAM2Teacher
from tests.helpers.sam2 import CONFIG, SIZE


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from sam2.build_sam import build_sam2

    torch.manual_seed(0)
    model = build_sam2(CONFIG, None, device="cpu", hydra_overrides_extra=["++model.image_size=256"])
    path = tmp_path_factory.mktemp("sam2") / "sam2_random_tiny.pt"
    torch.save({"model": model.state_dict()}, path)  # the released checkpoints' layout
    return path


@pytest.fixture(scope="module")
def teacher(checkpoint):
    return SAM2Teacher(checkpoint, CONFIG, image_size=SIZE, axis=2)


@pytest.fixture(scope="module")
def case():
    from bundle.data.demo import make_phantom

    image, label = make_phantom(7, shape=(24, 32, 10))
    mask = label == 1
    mask[:, :, 7:] = False  # slices without the structure: no prompt there
    return image, mask


@pytest.fixture(scope="module")
def shipped_student():
    """The released SegOne (models/model.pt) as the student: a real trained network placing SAM2's prompts."""
    from bundle.teacher import StudentMasks
    from tests.helpers.bundle_runs import ROOT

    return StudentMasks.from_inference_config(ROOT / "models" / "model.pt", ROOT)
