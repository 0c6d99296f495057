"""Full short runs of the real train.json with the SAM2 teacher: labelled, warm cache, student prompts with
unlabelled cases, 2D, and the teacher off."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers.sam2 import SIZE

# end-to-end: not part of the fast lane (make test-fast)
pytestmark = pytest.mark.slow


def test_training_with_the_teacher_fills_the_cache_and_leaves_sam2_unchanged(tmp_path, checkpoint, tiny_clip_config):
    """A full short run of the real train.json with the teacher on synthetic data, then a second run on a warm cache."""
    from tests.helpers.bundle_runs import train_overrides, workflow, write_msd

    data = write_msd(tmp_path / "msd", num_cases=4)
    teacher_overrides = {
        "teacher#checkpoint": str(checkpoint),
        "teacher#image_size": SIZE,
        "teacher_training#weight": 0.5,
        "teacher_training#iou_threshold": 0.0,
    }
    out = tmp_path / "run"
    wf = workflow("train.json", "train", **train_overrides(tiny_clip_config, data, out, **teacher_overrides))
    wf.initialize()
    assert wf.network_def.consistency_weight == 0.5
    student_before = {k: v.clone() for k, v in wf.network_def.state_dict().items()}
    teacher = wf.parser.get_parsed_content("teacher")
    wf.run()
    entries = sorted((out / "teacher_cache").glob("*.npz"))
    train_cases = len(wf.parser.get_parsed_content("train#datalist"))
    assert len(entries) == 2 * train_cases  # one per training case and class
    after = wf.network_def.state_dict()
    assert any(not torch.equal(student_before[k], after[k]) for k in student_before)  # the student learned
    saved = torch.load(checkpoint, weights_only=True)["model"]  # SAM2's checkpoint layout
    current = teacher.model.state_dict()
    assert all(torch.equal(saved[k], current[k]) for k in saved)  # SAM2 did not
    wf.finalize()

    stamps = {p: p.stat().st_mtime_ns for p in entries}
    out2 = tmp_path / "run2"
    overrides = train_overrides(
        tiny_clip_config, data, out2, **teacher_overrides, **{"teacher_training#cache_dir": str(out / "teacher_cache")}
    )
    wf2 = workflow("train.json", "train", **overrides)
    wf2.initialize()
    assert wf2.network_def.consistency_weight == 0.5  # the teacher is on in the second run too
    from bundle.transforms import TeacherTargetsd

    dataset = wf2.parser.get_parsed_content("train#dataset")
    targets = next(t for t in dataset.transform.transforms if isinstance(t, TeacherTargetsd))
    assert (targets.cache.hits, targets.cache.misses) == (2 * train_cases, 0)  # filled while initialising
    wf2.run()
    wf2.finalize()
    # warm cache: every entry was read, none written again, none added (a miss would write a new file)
    assert {p: p.stat().st_mtime_ns for p in (out / "teacher_cache").glob("*.npz")} == stamps


def test_training_without_a_teacher_checkpoint_has_no_consistency_term(tmp_path, tiny_clip_config, caplog):
    from tests.helpers.bundle_runs import train_overrides, workflow, write_msd

    data = write_msd(tmp_path / "msd", num_cases=4)
    wf = workflow("train.json", "train", **train_overrides(tiny_clip_config, data, tmp_path / "run", max_epochs=1))
    with caplog.at_level("INFO", logger="bundle.transforms.teacher"):
        wf.initialize()
        assert wf.network_def.consistency_weight == 0.0
        assert wf.parser.get_parsed_content("teacher") is None  # the disabled component
        assert wf.parser.get_parsed_content("teacher_student") is None
        wf.parser.get_parsed_content("train#preprocessing")  # the teacher's transform says it is off, once
    assert "SAM2 teacher: off" in caplog.text


def _write_unlabelled(folder, seed: int, num_cases: int = 2):
    """A folder of phantom images without labels (the unlabelled_dir of student mode)."""
    import nibabel as nib

    from bundle.data.demo import make_phantom
    from tests.helpers.bundle_runs import SHAPE

    folder.mkdir()
    for i in range(num_cases):
        nib.save(nib.Nifti1Image(make_phantom(seed + i, shape=SHAPE)[0], np.eye(4)), str(folder / f"u_{i}.nii.gz"))
    return folder


def test_training_with_student_prompts_and_unlabelled_cases(tmp_path, checkpoint, tiny_clip_config):
    """train.json with SAM2 prompted from a previous run's predictions, on labelled plus unlabelled cases."""
    from bundle.teacher import StudentMasks
    from bundle.transforms import TeacherTargetsd
    from tests.helpers.bundle_runs import train_overrides, workflow, write_msd

    data = write_msd(tmp_path / "msd", num_cases=4)
    unlabelled = _write_unlabelled(tmp_path / "unlabelled", seed=200)
    first = workflow("train.json", "train", **train_overrides(tiny_clip_config, data, tmp_path / "first"))
    first.initialize()
    first.run()
    first.finalize()
    student_file = tmp_path / "first" / "model.pt"

    out = tmp_path / "run"
    overrides = {
        "teacher#checkpoint": str(checkpoint),
        "teacher#image_size": SIZE,
        "teacher_training#weight": 0.5,
        "teacher_training#iou_threshold": 0.0,
        "teacher_training#prompt_source": "student",
        "teacher#box_mode": "volume",
        "teacher_training#student_checkpoint": str(student_file),
        "teacher_training#unlabelled_dir": str(unlabelled),
        "teacher_training#loss": "dice",
    }
    wf = workflow("train.json", "train", **train_overrides(tiny_clip_config, data, out, **overrides))
    wf.initialize()
    assert wf.network_def.consistency_loss == "dice" and wf.network_def.consistency_weight == 0.5
    datalist = wf.parser.get_parsed_content("train#datalist")
    assert sum("label" not in item for item in datalist) == 2  # the unlabelled cases joined the training cases
    dataset = wf.parser.get_parsed_content("train#dataset")
    targets = next(t for t in dataset.transform.transforms if isinstance(t, TeacherTargetsd))
    assert isinstance(targets.student, StudentMasks) and targets.student.checkpoint == str(student_file)
    assert targets.cache.misses == 2 * len(datalist)  # every case and class, labelled or not, asked SAM2 once
    flags = sorted(float(dataset[i]["supervised"]) for i in range(len(dataset)))
    assert flags == [0.0, 0.0] + [1.0] * (len(datalist) - 2)
    student_state = {k: v.clone() for k, v in targets.student.segmenter.state_dict().items()}
    before = {k: v.clone() for k, v in wf.network_def.state_dict().items()}
    wf.run()
    after = wf.network_def.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the network being trained learned
    saved = torch.load(student_file, weights_only=True)
    # the student that places the prompts is the fixed checkpoint, not the network being trained
    assert all(torch.equal(student_state[k], saved[k]) for k in saved)
    assert all(torch.equal(v, targets.student.segmenter.state_dict()[k]) for k, v in student_state.items())
    assert len(list((out / "teacher_cache").glob("*.npz"))) == 2 * len(datalist)
    wf.finalize()


def test_training_in_2d_with_the_teacher(tmp_path, checkpoint, tiny_clip_config):
    """spatial_dims 2: a 2D SegOne trained by train.json on 2D images, SAM2 prompted once per image."""
    import json

    import nibabel as nib

    from bundle.data.demo import DEMO_LABELS, make_phantom
    from tests.helpers.bundle_runs import train_overrides, workflow

    root = tmp_path / "msd2d"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i in range(5):
        image, label = make_phantom(100 + i, shape=(32, 40, 32))
        nib.save(nib.Nifti1Image(image[:, :, 16], np.eye(4)), str(root / "imagesTr" / f"c{i}.nii.gz"))
        nib.save(nib.Nifti1Image(label[:, :, 16], np.eye(4)), str(root / "labelsTr" / f"c{i}.nii.gz"))
        training.append({"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"labels": DEMO_LABELS, "training": training}))
    out = tmp_path / "run"
    overrides = train_overrides(
        tiny_clip_config,
        root,
        out,
        spatial_dims=2,
        roi_size=[16, 16],
        **{
            "teacher#checkpoint": str(checkpoint),
            "teacher#image_size": SIZE,
            "teacher_training#iou_threshold": 0.0,
            "teacher#prompt": "box+points",
        },
    )
    wf = workflow("train.json", "train", **overrides)
    wf.initialize()
    dataset = wf.parser.get_parsed_content("train#dataset")
    item = dataset[0]
    assert item["image"].shape == (1, 16, 16) and item["teacher"].shape == (1, 16, 16)  # cropped with the image
    before = {k: v.clone() for k, v in wf.network_def.state_dict().items()}
    wf.run()
    assert any(not torch.equal(before[k], v) for k, v in wf.network_def.state_dict().items())
    assert (out / "model.pt").is_file()
    train_cases = len(wf.parser.get_parsed_content("train#datalist"))
    assert len(list((out / "teacher_cache").glob("*.npz"))) == 2 * train_cases
    wf.finalize()
