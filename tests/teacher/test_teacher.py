"""The SAM2 teacher on a SAM2 model with random weights, built from the package's own config and saved by the test:
the real loading path, volume shapes and ranges, the cache (hit, miss on changed settings), a frozen model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bundle.teacher import SAM2Teacher, TeacherCache
from bundle.utils.config import BUNDLE_ROOT

CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
# SAM2 runs at any multiple of 16; 128 keeps the suite quick (real use: 256/512/1024)
SIZE = 128


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


def test_cache_hit_skips_sam2_and_changed_settings_miss(tmp_path, teacher, checkpoint, case, monkeypatch):
    image, mask = case
    cache = TeacherCache(tmp_path / "cache")
    calls = []
    real_volumes = teacher.volumes

    def counted(*args):
        calls.append(1)
        return real_volumes(*args)

    monkeypatch.setattr(teacher, "volumes", counted)
    first = cache.get_or_compute(teacher, "case_7", 1, image, mask)
    second = cache.get_or_compute(teacher, "case_7", 1, image, mask)
    assert len(calls) == 1  # the second call read the cache; SAM2 did not run again
    np.testing.assert_allclose(second[0], first[0], atol=1e-3)  # stored as float16
    np.testing.assert_array_equal(second[1], first[1])
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    assert (cache.hits, cache.misses) == (1, 1)
    key = TeacherCache.case_key("case_7", image, mask)
    assert cache.get(key, 1, teacher.settings) is not None  # the entry the two calls shared
    other = SAM2Teacher(checkpoint, CONFIG, image_size=SIZE, axis=2, box_margin=4)
    assert cache.get(key, 1, other.settings) is None  # another margin: another key
    assert cache.get(key, 2, teacher.settings) is None  # another class
    assert cache.get(TeacherCache.case_key("case_8", image, mask), 1, teacher.settings) is None  # another case
    edited = image.copy()
    edited[0, 0, 0] += 1.0  # the same case name with an edited image: SAM2 runs again
    cache.get_or_compute(teacher, "case_7", 1, edited, mask)
    assert len(calls) == 2 and cache.misses == 2
    # a damaged entry (a disk error, a hand-edited file) is computed again and rewritten, not a crash
    entry = cache.path(key, 1, teacher.settings)
    entry.write_bytes(b"not an npz")
    again = cache.get_or_compute(teacher, "case_7", 1, image, mask)
    assert len(calls) == 3 and cache.misses == 3
    np.testing.assert_array_equal(again[1], first[1])
    cache.get_or_compute(teacher, "case_7", 1, image, mask)
    assert len(calls) == 3 and cache.hits == 2  # the rewritten entry reads back


def test_classes_of_a_case_share_sam2_image_encoding(tmp_path, teacher, monkeypatch):
    from bundle.data.demo import make_phantom

    image, label = make_phantom(5, shape=(24, 32, 12))
    masks = {1: label == 1, 2: label == 2}
    separately = {c: teacher.volume(image, m) for c, m in masks.items()}
    encoded = []
    real_set_image = teacher.predictor.set_image
    monkeypatch.setattr(teacher.predictor, "set_image", lambda img: encoded.append(1) or real_set_image(img))
    cache = TeacherCache(tmp_path / "cache")
    together = cache.get_or_compute_many(teacher, "case_5", image, masks)
    either = (label == 1).any(axis=(0, 1)) | (label == 2).any(axis=(0, 1))
    assert len(encoded) == either.sum() < sum(m.any(axis=(0, 1)).sum() for m in masks.values())  # once per slice
    for c in masks:
        np.testing.assert_allclose(together[c][0], separately[c][0], atol=1e-5)
        np.testing.assert_array_equal(together[c][1], separately[c][1])
    assert (cache.hits, cache.misses) == (0, 2)
    cache.get_or_compute(teacher, "case_5", 2, image, masks[2])
    assert (cache.hits, cache.misses) == (1, 2) and len(encoded) == either.sum()  # read back: SAM2 not run


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


def test_training_with_the_teacher_fills_the_cache_and_leaves_sam2_unchanged(tmp_path, checkpoint, tiny_clip_config):
    """A full short run of the real train.json with the teacher on synthetic data, then a second run on a warm cache."""
    from tests.helpers.bundle_runs import train_overrides, workflow, write_msd

    data = write_msd(tmp_path / "msd", num_cases=4)
    teacher_overrides = {"teacher#checkpoint": str(checkpoint), "teacher#image_size": SIZE, "teacher#weight": 0.5,
                         "teacher#iou_threshold": 0.0}
    out = tmp_path / "run"
    wf = workflow("train.json", "train", **train_overrides(tiny_clip_config, data, out, **teacher_overrides))
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
    saved = torch.load(checkpoint, weights_only=True)
    current = teacher.model.state_dict()
    assert all(torch.equal(saved[k], current[k]) for k in saved)  # SAM2 did not
    wf.finalize()

    stamps = {p: p.stat().st_mtime_ns for p in entries}
    out2 = tmp_path / "run2"
    overrides = train_overrides(tiny_clip_config, data, out2, **teacher_overrides,
                                 **{"teacher#cache_dir": str(out / "teacher_cache")})
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
    with caplog.at_level("INFO", logger="bundle.teacher"):
        wf.initialize()
        assert wf.network_def.consistency_weight == 0.0
    assert "SAM2 teacher: off" in caplog.text


def _fill_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "fill_teacher_cache", BUNDLE_ROOT / "scripts" / "fill_teacher_cache.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_cache_filling_script_fills_once(tmp_path, checkpoint, capsys):
    from tests.helpers.bundle_runs import write_msd

    script = _fill_script()
    data = write_msd(tmp_path / "msd", num_cases=5)
    args = ["--dataset_dir", str(data), "--checkpoint", str(checkpoint), "--image_size", str(SIZE),
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
    with pytest.raises(ValueError, match="prompt must be one of"):
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
    with pytest.raises(ValueError, match="box_mode"):
        SAM2Teacher(checkpoint, CONFIG, image_size=SIZE, box_mode="cube")


def test_a_2d_image_is_one_slice(teacher, case):
    image, mask = case
    k = int(np.nonzero(mask.any(axis=(0, 1)))[0][0])
    probs, iou = teacher.volume(image[:, :, k], mask[:, :, k])
    assert probs.shape == image.shape[:2] and iou.shape == (1,) and np.isfinite(iou).all()
    np.testing.assert_allclose(probs, teacher.volume(image, mask)[0][:, :, k], atol=1e-5)  # as the slice of a volume
    empty, none = teacher.volume(image[:, :, k], np.zeros_like(mask[:, :, k]))
    assert (empty == 0).all() and np.isnan(none).all()


def _meta_image(array: np.ndarray, name: str):
    from monai.data import MetaTensor

    return MetaTensor(torch.as_tensor(array, dtype=torch.float32)[None], meta={"filename_or_obj": name})


def test_teacher_targets_in_2d(tmp_path, teacher, case):
    from bundle.transforms import TeacherTargetsd

    image, mask = case
    k = int(np.nonzero(mask.any(axis=(0, 1)))[0][0])
    label = torch.as_tensor(mask[:, :, k].astype(np.uint8))[None]
    targets = TeacherTargetsd("image", teacher, tmp_path / "cache", class_values=[1, 2], iou_threshold=0.0)
    out = targets({"image": _meta_image(image[:, :, k], "slice.nii.gz"), "label": label})
    assert out["teacher"].shape == (2, *image.shape[:2]) and out["teacher_weight"].shape == out["teacher"].shape
    assert (out["teacher_weight"][0] == 1).all() and (out["teacher_weight"][1] == 0).all()  # class 2 absent here
    assert float(out["supervised"]) == 1.0


@pytest.fixture(scope="module")
def shipped_student():
    """The released SegOne (models/model.pt) as the student: a real trained network placing SAM2's prompts."""
    from bundle.teacher import StudentMasks
    from tests.helpers.bundle_runs import ROOT

    return StudentMasks.from_inference_config(ROOT / "models" / "model.pt", ROOT)


def test_student_prompts_regularise_an_unlabelled_case(tmp_path, teacher, shipped_student):
    from bundle.data.demo import make_phantom
    from bundle.transforms import TeacherTargetsd

    image, _ = make_phantom(3)
    image = (image - image[image != 0].mean()) / image[image != 0].std()
    student = shipped_student(torch.as_tensor(image)[None])
    assert student.shape == image.shape and set(np.unique(student)) <= {0, 1, 2}
    assert (student == 1).any() and (student == 2).any()  # the student found both structures: prompts to place
    targets = TeacherTargetsd("image", teacher, tmp_path / "cache", class_values=[1, 2], iou_threshold=0.0,
                              prompt_source="student", student=shipped_student)
    out = targets({"image": _meta_image(image, "unlabelled_3.nii.gz")})  # no label
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
    targets({"image": _meta_image(image, "unlabelled_3.nii.gz")})
    assert (targets.cache.hits, targets.cache.misses) == (2, 2)  # the student's masks are the same: cached


def test_teacher_modes_refuse_what_they_cannot_do(tmp_path, teacher, checkpoint):
    from bundle.teacher import unlabelled_datalist
    from bundle.teacher.student import build_student
    from bundle.transforms import TeacherTargetsd

    with pytest.raises(ValueError, match="no label to place SAM2's prompts"):
        TeacherTargetsd("image", teacher, tmp_path, [1, 2])({"image": _meta_image(np.zeros((8, 8, 4)), "u.nii.gz")})
    with pytest.raises(ValueError, match="needs a student"):
        TeacherTargetsd("image", teacher, tmp_path, [1, 2], prompt_source="student")
    with pytest.raises(ValueError, match="prompt_source must be one of"):
        TeacherTargetsd("image", teacher, tmp_path, [1, 2], prompt_source="atlas")
    with pytest.raises(ValueError, match="student_checkpoint"):
        build_student({"checkpoint": str(checkpoint), "prompt_source": "student"}, torch.nn.Linear(1, 1), [8, 8, 8])
    assert build_student({"checkpoint": None, "prompt_source": "student"}, torch.nn.Linear(1, 1), [8, 8, 8]) is None
    from bundle.diffusion import MaskDiffusion
    from bundle.networks import SegOne
    from bundle.utils.checkpoint import CheckpointError

    def diffusion(features):
        return MaskDiffusion(SegOne(3, 2, 1, features=features, with_timestep=True, text_dim=4), num_prompts=2,
                             embed_dim=4)

    other = tmp_path / "other_student.pt"
    torch.save({"model": diffusion((8, 16, 32)).state_dict()}, other)
    settings = {"checkpoint": str(checkpoint), "prompt_source": "student", "student_checkpoint": str(other)}
    with pytest.raises(CheckpointError, match="other_student.pt"):  # a student of another architecture
        build_student(settings, diffusion((4, 8, 16)), [16, 16, 16])
    with pytest.raises(CheckpointError, match="absent.pt"):
        build_student({**settings, "student_checkpoint": str(tmp_path / "absent.pt")}, diffusion((4, 8, 16)), [16] * 3)
    with pytest.raises(ValueError, match="set teacher#checkpoint"):
        unlabelled_datalist({"unlabelled_dir": str(tmp_path)})
    with pytest.raises(ValueError, match="prompt_source to 'student'"):
        unlabelled_datalist({"unlabelled_dir": str(tmp_path), "checkpoint": str(checkpoint)})
    assert unlabelled_datalist({"checkpoint": str(checkpoint)}) == []
    from tests.helpers.bundle_runs import write_msd

    data = write_msd(tmp_path / "msd", num_cases=2)  # no imagesTs: find_images falls back to imagesTr
    student_settings = {"checkpoint": str(checkpoint), "prompt_source": "student", "unlabelled_dir": str(data)}
    labelled = [{"image": str(data / "imagesTr" / f"case_{i}.nii.gz")} for i in range(2)]
    with pytest.raises(ValueError, match="2 image\\(s\\) belong to the labelled data set"):
        unlabelled_datalist(student_settings, labelled)
    assert len(unlabelled_datalist(student_settings, labelled[:0])) == 2


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
    overrides = {"teacher#checkpoint": str(checkpoint), "teacher#image_size": SIZE, "teacher#weight": 0.5,
                 "teacher#iou_threshold": 0.0, "teacher#prompt_source": "student", "teacher#box_mode": "volume",
                 "teacher#student_checkpoint": str(student_file), "teacher#unlabelled_dir": str(unlabelled),
                 "teacher#loss": "dice"}
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
    overrides = train_overrides(tiny_clip_config, root, out, spatial_dims=2, roi_size=[16, 16],
                                 **{"teacher#checkpoint": str(checkpoint), "teacher#image_size": SIZE,
                                    "teacher#iou_threshold": 0.0, "teacher#prompt": "box+points"})
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


def test_cache_filling_script_with_student_prompts_and_unlabelled_cases(tmp_path, checkpoint, capsys):
    """The default train.json network with the released model as the student, as a user would run it."""
    from tests.helpers.bundle_runs import ROOT, write_msd

    data = write_msd(tmp_path / "msd", num_cases=3)
    unlabelled = _write_unlabelled(tmp_path / "unlabelled", seed=300)
    args = ["--dataset_dir", str(data), "--checkpoint", str(checkpoint), "--image_size", str(SIZE),
            "--cache_dir", str(tmp_path / "cache"), "--prompt_source", "student", "--box_mode", "volume",
            "--student_checkpoint", str(ROOT / "models" / "model.pt"), "--unlabelled_dir", str(unlabelled),
            "--set", "teacher#prompt=box+points", "--set", "teacher#num_points=2"]
    assert _fill_script().main(args) == 0
    printed = capsys.readouterr().out
    cases = int(printed.split(" training cases")[0])
    assert "(2 unlabelled)" in printed and f"{2 * cases} computed, 0 already cached" in printed
    entries = list((tmp_path / "cache").glob("*.npz"))
    assert len(entries) == 2 * cases
    ious = [np.load(p)["iou"] for p in entries]
    assert sum(np.isfinite(i).any() for i in ious) >= cases  # the student's masks placed prompts in most entries


@pytest.mark.slow
def test_ablation_script_runs_both_arms(tmp_path, checkpoint, tiny_clip_config, capsys):
    """The with/without comparison end to end on tiny settings (plumbing only: a random SAM2 gives no result)."""
    import importlib.util
    import json

    from tests.helpers.bundle_runs import infer_overrides, train_overrides, write_msd

    spec = importlib.util.spec_from_file_location(
        "ablate_teacher", BUNDLE_ROOT / "scripts" / "ablate_teacher.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    data = write_msd(tmp_path / "msd", num_cases=5)
    # val_interval past max_epochs: no validation runs, and the table says so rather than failing
    train = train_overrides(tiny_clip_config, data, tmp_path, val_interval=5, **{"teacher#iou_threshold": 0.0})
    evaluate = infer_overrides(tmp_path, data, tmp_path, val_fraction=train["val_fraction"],
                                test_fraction=train["test_fraction"])
    skip = {"dataset_dir", "output_dir", "max_epochs", "ckpt_path"}
    as_set = lambda d: [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in d.items() if k not in skip]  # noqa: E731
    args = ["--dataset_dir", str(data), "--checkpoint", str(checkpoint), "--image_size", str(SIZE),
            "--max_epochs", "1", "--output_dir", str(tmp_path / "ablate"), "--teacher_set", "teacher#loss=bce"]
    for item in as_set(train):
        args += ["--set", item]
    for item in as_set(evaluate):
        args += ["--eval_set", item]
    assert script.main(args) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| with")]
    assert [line.split(" |")[0] for line in table] == ["| without teacher", "| with SAM2 teacher"]
    assert all(line.split(" | ")[1] == "no validation" for line in table)
    without, with_teacher = tmp_path / "ablate" / "without_teacher", tmp_path / "ablate" / "with_SAM2_teacher"
    for run in (without, with_teacher):
        assert (run / "model.pt").is_file() and (run / "evaluation" / "metrics.json").is_file()
    assert not (without / "teacher_cache").exists() and list((with_teacher / "teacher_cache").glob("*.npz"))
