"""Student prompts: the released model places SAM2's prompts on an unlabelled case; refusals of the teacher modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers.images import meta_image


def test_student_prompts_regularise_an_unlabelled_case(tmp_path, teacher, shipped_student):
    from bundle.data.demo import make_phantom
    from bundle.transforms import TeacherTargetsd

    image, _ = make_phantom(3)
    image = (image - image[image != 0].mean()) / image[image != 0].std()
    student = shipped_student(torch.as_tensor(image)[None])
    assert student.shape == image.shape and set(np.unique(student)) <= {0, 1, 2}
    assert (student == 1).any() and (student == 2).any()  # the student found both structures: prompts to place
    targets = TeacherTargetsd(
        "image",
        teacher,
        tmp_path / "cache",
        class_values=[1, 2],
        iou_threshold=0.0,
        prompt_source="student",
        student=shipped_student,
    )
    out = targets({"image": meta_image(image, "unlabelled_3.nii.gz")})  # no label
    assert float(out["supervised"]) == 0.0
    for c, value in enumerate((1, 2)):
        expected, iou = teacher.volume(image, student == value)  # SAM2 prompted from the student's own mask
        np.testing.assert_allclose(out["teacher"][c].numpy(), expected, atol=1e-3)
        trusted = np.isfinite(iou)
        assert (out["teacher_weight"][c].numpy().any(axis=(0, 1)) == trusted).all()
    # the pseudo-label that makes the diffusion's noisy input: the trusted teacher masks, most probable class
    teacher_probs = out["teacher"].numpy() * out["teacher_weight"].numpy()
    pseudo = out["label"][0].numpy()
    assert out["label"].dtype == torch.uint8 and pseudo.shape == image.shape
    np.testing.assert_array_equal(pseudo > 0, teacher_probs.max(0) >= 0.5)
    assert targets.cache.misses == 2
    targets({"image": meta_image(image, "unlabelled_3.nii.gz")})
    assert (targets.cache.hits, targets.cache.misses) == (2, 2)  # the student's masks are the same: cached


def test_teacher_modes_refuse_what_they_cannot_do(tmp_path, teacher):
    from bundle.teacher import StudentMasks, unlabelled_datalist
    from bundle.transforms import TeacherTargetsd

    with pytest.raises(ValueError, match="no label to place SAM2's prompts"):
        TeacherTargetsd("image", teacher, tmp_path, [1, 2])({"image": meta_image(np.zeros((8, 8, 4)), "u.nii.gz")})
    with pytest.raises(ValueError, match="needs a student"):
        TeacherTargetsd("image", teacher, tmp_path, [1, 2], prompt_source="student")
    with pytest.raises(ValueError, match="Unsupported option .atlas."):
        TeacherTargetsd("image", teacher, tmp_path, [1, 2], prompt_source="atlas")
    with pytest.raises(ValueError, match="student_checkpoint"):
        StudentMasks.from_checkpoint(None, torch.nn.Linear(1, 1), [8, 8, 8])
    from bundle.diffusion import MaskDiffusion
    from bundle.networks import SegOne
    from bundle.utils.checkpoint import CheckpointError

    def diffusion(features):
        return MaskDiffusion(
            SegOne(3, 2, 1, features=features, with_timestep=True, text_dim=4), num_prompts=2, embed_dim=4
        )

    other = tmp_path / "other_student.pt"
    torch.save(diffusion((8, 16, 32)).state_dict(), other)
    with pytest.raises(CheckpointError, match="other_student.pt"):  # a student of another architecture
        StudentMasks.from_checkpoint(other, diffusion((4, 8, 16)), [16, 16, 16])
    with pytest.raises(CheckpointError, match="absent.pt"):
        StudentMasks.from_checkpoint(tmp_path / "absent.pt", diffusion((4, 8, 16)), [16] * 3)
    with pytest.raises(ValueError, match="set teacher#checkpoint"):
        unlabelled_datalist(str(tmp_path), None, tmp_path / "demo", teacher=None, prompt_source="student")
    with pytest.raises(ValueError, match="prompt_source to 'student'"):
        unlabelled_datalist(str(tmp_path), None, tmp_path / "demo", teacher=teacher, prompt_source="label")
    assert unlabelled_datalist(None, None, teacher=teacher, prompt_source="student") == []
    from tests.helpers.bundle_runs import write_msd

    data = write_msd(tmp_path / "msd", num_cases=2)  # no imagesTs: find_images falls back to imagesTr
    with pytest.raises(ValueError, match="2 image\\(s\\) belong to the labelled data set"):
        unlabelled_datalist(str(data), str(data), teacher=teacher, prompt_source="student")
    other_data = write_msd(tmp_path / "other", num_cases=3)
    assert len(unlabelled_datalist(str(data), str(other_data), teacher=teacher, prompt_source="student")) == 2


def test_a_student_trained_with_coordinate_channels_gets_the_volume_s_positions():
    """A model of ``coordinate_channels`` takes the image and its voxels' positions: the student adds the positions of
    the whole volume it is given (what inference does before its windows); an image the network does not take is
    refused, naming the file."""
    from monai.inferers import sliding_window_inference

    from bundle.diffusion import PromptedSegmenter
    from bundle.networks import SegOne
    from bundle.teacher import StudentMasks
    from bundle.transforms import AddCoordinatesd

    torch.manual_seed(0)
    denoiser = SegOne(3, 5, 1, features=(8, 16, 32), encoder_blocks=1, decoder_blocks=1, with_timestep=True, text_dim=4)
    segmenter = PromptedSegmenter(denoiser, prompt_embeddings=torch.randn(2, 4), num_inference_steps=1).eval()
    student = StudentMasks(segmenter, (16, 16, 16), checkpoint="coords.pt", coordinate_channels=True)
    image = torch.randn(1, 20, 16, 24)
    with_positions = AddCoordinatesd("image")({"image": image})["image"]
    expected = sliding_window_inference(with_positions[None], (16, 16, 16), 1, segmenter, overlap=0.25, mode="gaussian")
    np.testing.assert_array_equal(student(image), expected[0].argmax(0).numpy())
    with pytest.raises(ValueError, match="coords.pt takes 4 image channel"):
        student(torch.randn(2, 20, 16, 24))
    with pytest.raises(ValueError, match=r"coords.pt takes 4 image channel\(s\), the image has 1"):
        StudentMasks(segmenter, (16, 16, 16), checkpoint="coords.pt")(image)
