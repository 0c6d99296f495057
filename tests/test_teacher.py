"""The SAM2 teacher on a SAM2 model with random weights, built from the package's own config and saved by the test:
the real loading path, volume shapes and ranges, the cache (hit, miss on changed settings), a frozen model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bundle.teacher import SAM2Teacher, TeacherCache

CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"


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
    return SAM2Teacher(checkpoint, CONFIG, image_size=256, axis=2)


@pytest.fixture(scope="module")
def case():
    from bundle.demo import make_phantom

    image, label = make_phantom(7, shape=(24, 32, 10))
    mask = label == 1
    mask[:, :, 7:] = False  # slices without the structure: no prompt there
    return image, mask


def test_teacher_volume_shapes_ranges_and_unprompted_slices(teacher, case):
    image, mask = case
    probs, iou = teacher.volume(image, mask)
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


def test_cache_hit_skips_sam2_and_changed_settings_miss(tmp_path, teacher, checkpoint, case, monkeypatch):
    image, mask = case
    cache = TeacherCache(tmp_path / "cache")
    calls = []
    real_volume = teacher.volume

    def counted(*args):
        calls.append(1)
        return real_volume(*args)

    monkeypatch.setattr(teacher, "volume", counted)
    first = cache.get_or_compute(teacher, "case_7", 1, image, mask)
    second = cache.get_or_compute(teacher, "case_7", 1, image, mask)
    assert len(calls) == 1  # the second call read the cache; SAM2 did not run again
    np.testing.assert_allclose(second[0], first[0], atol=1e-3)  # stored as float16
    np.testing.assert_array_equal(second[1], first[1])
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    assert (cache.hits, cache.misses) == (1, 1)
    key = TeacherCache.case_key("case_7", image, mask)
    assert cache.get(key, 1, teacher.settings) is not None  # the entry the two calls shared
    other = SAM2Teacher(checkpoint, CONFIG, image_size=256, axis=2, box_margin=4)
    assert cache.get(key, 1, other.settings) is None  # another margin: another key
    assert cache.get(key, 2, teacher.settings) is None  # another class
    assert cache.get(TeacherCache.case_key("case_8", image, mask), 1, teacher.settings) is None  # another case
    edited = image.copy()
    edited[0, 0, 0] += 1.0  # the same case name with an edited image: SAM2 runs again
    cache.get_or_compute(teacher, "case_7", 1, edited, mask)
    assert len(calls) == 2 and cache.misses == 2


def test_missing_or_mismatched_checkpoint_is_a_clear_error(tmp_path, checkpoint):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        SAM2Teacher(tmp_path / "absent.pt", CONFIG, image_size=256)
    with pytest.raises(RuntimeError, match="does not fit SAM2 config"):
        SAM2Teacher(checkpoint, "configs/sam2.1/sam2.1_hiera_s.yaml", image_size=256)
    with pytest.raises(ValueError, match="multiple of 16"):
        SAM2Teacher(checkpoint, CONFIG, image_size=250)


def test_bad_volumes_are_refused(teacher):
    with pytest.raises(ValueError, match="same"):
        teacher.volume(np.zeros((4, 4, 4)), np.zeros((4, 4, 3), bool))
    with pytest.raises(ValueError, match="NaN"):
        teacher.volume(np.full((4, 4, 4), np.nan), np.ones((4, 4, 4), bool))


def test_training_with_the_teacher_fills_the_cache_and_leaves_sam2_unchanged(tmp_path, checkpoint, tiny_clip_config):
    """A full short run of the real train.json with the teacher on synthetic data, then a second run on a warm cache."""
    from tests.test_bundle_workflows import _train_overrides, _workflow, _write_msd

    data = _write_msd(tmp_path / "msd", num_cases=4)
    teacher_overrides = {"teacher#checkpoint": str(checkpoint), "teacher#image_size": 256, "teacher#weight": 0.5,
                         "teacher#iou_threshold": 0.0}
    out = tmp_path / "run"
    wf = _workflow("train.json", "train", **_train_overrides(tiny_clip_config, data, out, **teacher_overrides))
    wf.initialize()
    assert wf.network_def.consistency_weight == 0.5
    student_before = {k: v.clone() for k, v in wf.network_def.state_dict().items()}
    teacher = wf.parser.get_parsed_content("teacher_model")
    wf.run()
    entries = sorted((out / "teacher_cache").glob("*.npz"))
    train_cases = len(wf.parser.get_parsed_content("train#datalist"))
    assert len(entries) == 2 * train_cases  # one per training case and class
    after = wf.network_def.state_dict()
    assert any(not torch.equal(student_before[k], after[k]) for k in student_before)  # the student learned
    saved = torch.load(checkpoint, weights_only=True)["model"]
    current = teacher.model.state_dict()
    assert all(torch.equal(saved[k], current[k]) for k in saved)  # SAM2 did not
    wf.finalize()

    stamps = {p: p.stat().st_mtime_ns for p in entries}
    out2 = tmp_path / "run2"
    overrides = _train_overrides(tiny_clip_config, data, out2, **teacher_overrides,
                                 **{"teacher#cache_dir": str(out / "teacher_cache")})
    wf2 = _workflow("train.json", "train", **overrides)
    wf2.initialize()
    assert wf2.network_def.consistency_weight == 0.5  # the teacher is on in the second run too
    from bundle.teacher import TeacherTargetsd

    dataset = wf2.parser.get_parsed_content("train#dataset")
    targets = next(t for t in dataset.transform.transforms if isinstance(t, TeacherTargetsd))
    assert (targets.cache.hits, targets.cache.misses) == (2 * train_cases, 0)  # filled while initialising
    wf2.run()
    wf2.finalize()
    # warm cache: every entry was read, none written again, none added (a miss would write a new file)
    assert {p: p.stat().st_mtime_ns for p in (out / "teacher_cache").glob("*.npz")} == stamps


def test_training_without_a_teacher_checkpoint_has_no_consistency_term(tmp_path, tiny_clip_config, caplog):
    from tests.test_bundle_workflows import _train_overrides, _workflow, _write_msd

    data = _write_msd(tmp_path / "msd", num_cases=4)
    wf = _workflow("train.json", "train", **_train_overrides(tiny_clip_config, data, tmp_path / "run", max_epochs=1))
    with caplog.at_level("INFO", logger="bundle.teacher"):
        wf.initialize()
        assert wf.network_def.consistency_weight == 0.0
    assert "SAM2 teacher: off" in caplog.text


def test_cache_filling_script_fills_once(tmp_path, checkpoint, capsys):
    import importlib.util
    from pathlib import Path

    from tests.test_bundle_workflows import _write_msd

    spec = importlib.util.spec_from_file_location(
        "fill_teacher_cache", Path(__file__).resolve().parents[1] / "scripts" / "fill_teacher_cache.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    data = _write_msd(tmp_path / "msd", num_cases=5)
    args = ["--dataset_dir", str(data), "--checkpoint", str(checkpoint), "--image_size", "256",
            "--cache_dir", str(tmp_path / "cache")]
    assert script.main(args) == 0
    first = capsys.readouterr().out
    cases = int(first.split(" training cases")[0])
    assert 0 < cases < 5  # the training split only
    assert f"{2 * cases} computed, 0 already cached" in first
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2 * cases  # one per case and class
    assert script.main(args) == 0
    assert f"0 computed, {2 * cases} already cached" in capsys.readouterr().out
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2 * cases
