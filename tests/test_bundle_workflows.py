"""The bundle's configs run end to end (train, resume, infer, evaluate, export) on small synthetic data.

Everything is shrunk by overrides (tiny text tower, 3-level network, one 32^3 window) as model-zoo CI does, so the
real configs and code paths run in seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from bundle.utils.cli import bundle_override_args
from bundle.utils.io import TEMP_MARK
from tests.helpers.bundle_runs import (
    CONFIGS,
    META,
    ROOT,
    SMALL,
    TINY_CLIP_DIM,
    bundle_cli,
    error_chain,
    infer_overrides,
    train_overrides,
    workflow,
    write_msd,
)

# end-to-end: not part of the fast lane (make test-fast)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_clip_config, msd_dir) -> Path:
    """One short training run with the real train.json; returns its output folder."""
    out = tmp_path_factory.mktemp("train")
    wf = workflow("train.json", "train", **train_overrides(tiny_clip_config, msd_dir, out, max_epochs=2))
    wf.initialize()
    assert not wf.check_properties()
    wf.run()
    wf.finalize()
    return out


def test_training_writes_model_report_and_events(trained):
    for name in ("model.pt", "last.pt", "curves.png", "overlays.png", "history.json"):
        assert (trained / name).is_file(), name
    assert list((trained / "events").glob("events.out.tfevents.*"))
    state = torch.load(trained / "model.pt", weights_only=True)  # a plain state dict of the network
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert state["prompt_embeddings"].shape == (2, TINY_CLIP_DIM)
    info = torch.load(trained / "model.prompts.pt", weights_only=True)
    assert set(info) == {"prompt_table", "metadata"}
    assert info["prompt_table"]["prompts"] == ["anterior hippocampus", "posterior hippocampus"]
    assert info["metadata"]["epoch"] in (1, 2) and info["metadata"]["metric_name"] == "val_mean_dice"
    history = json.loads((trained / "history.json").read_text())
    assert [e for e, _ in history["loss"]] == [1, 2] and [e for e, _ in history["metric"]] == [1, 2]
    last = torch.load(trained / "last.pt", weights_only=True)
    assert set(last) == {"model", "optimizer", "trainer", "lr_scheduler", "ema"}  # EMA on by default (0.7.0)
    assert last["trainer"]["iteration"] > 0


# every switch of the training recipe on (docs/README.md, "Preprocessing and training")
RECIPE = {
    "augment_spatial": True,
    "augment_intensity": True,
    "ema_decay": 0.99,
    "warmup_epochs": 1,
    "diffusion#timestep_bias": 10.0,
    "prediction_type": "logits",
    "diffusion#l1_weight": 0.0,
    "diffusion#bce_weight": 1.0,
    "diffusion#competition_weight": 1.0,
    "all_prompts": True,
    "encoder_blocks": [1, 1, 2],
    "decoder_blocks": [1, 1],
    "features": [8, 8, 16],  # a shift block needs 7 channels at the first level
}


def test_training_recipe_switches_run_and_keep_the_averaged_weights(tmp_path, tiny_clip_config, msd_dir):
    out = tmp_path / "recipe"
    overrides = train_overrides(tiny_clip_config, msd_dir, out, max_epochs=2, val_interval=2, **RECIPE)
    wf = workflow("train.json", "train", **overrides)
    wf.initialize()
    names = [type(t).__name__ for t in wf.parser.get_parsed_content("train#random_transforms")]
    for name in ("RandAffined", "RandFlipd", "RandGaussianNoised", "RandSimulateLowResolutiond"):
        assert name in names, names
    assert type(wf.parser.get_parsed_content("lr_scheduler")).__name__ == "WarmupCosineSchedule"
    network = wf.parser.get_parsed_content("network")
    assert network.prediction_type == "logits" and network.competition_weight == 1.0
    losses = []
    wf.trainer.add_event_handler("ITERATION_COMPLETED", lambda e: losses.append(dict(e.state.output[0])))
    wf.run()
    wf.finalize()
    last = torch.load(out / "last.pt", weights_only=True)
    assert set(last) == {"model", "optimizer", "trainer", "lr_scheduler", "ema"}
    steps = last["trainer"]["iteration"]
    assert int(last["ema"]["n_averaged"]) == steps > 0 and last["lr_scheduler"]["last_epoch"] == steps
    # the model file (one validation, at the last epoch) holds the averaged weights, not the live ones
    saved = torch.load(out / "model.pt", weights_only=True)
    ema = {k[len("module.") :]: v for k, v in last["ema"].items() if k.startswith("module.")}
    assert set(saved) == set(ema) and all(torch.equal(saved[k], ema[k]) for k in saved)
    assert any(not torch.equal(last["model"][k], ema[k]) for k in saved if saved[k].is_floating_point())
    assert any(".encoder.0.blocks.0." in k for k in saved)  # encoder_blocks: a block at the first level
    # every class of an image prompted in one step (a decollated label: [2, *S]), competing: the multi-class term
    assert losses and all(o["competition"] > 0 and o["bce"] > 0 and o["label"].shape[0] == 2 for o in losses)


@pytest.mark.parametrize("prompt_layers", [0, 2])
def test_a_shared_decoder_trains_and_evaluates_through_the_configs(tmp_path, tiny_clip_config, msd_dir, prompt_layers):
    """``--shared_decoder True`` with ``--prompts_per_image 2``: one decoder pass per image in training (two prompts
    of it in one step, competing) and in evaluation; the model file holds the per-prompt fusion (or, with
    ``--prompt_layers``, the prompt-controlled layers), and a config without the switches refuses it by name."""
    out = tmp_path / "shared"
    switches = {"shared_decoder": True, "center_prompts": True, "prompts_per_image": 2, "prompt_layers": prompt_layers}
    switches["diffusion#competition_weight"] = 1.0
    wf = workflow("train.json", "train", **train_overrides(tiny_clip_config, msd_dir, out, **switches))
    wf.initialize()
    denoiser = wf.parser.get_parsed_content("network").denoiser
    assert denoiser.shared_decoder
    passes, terms = [], []
    denoiser.decoder[-1].register_forward_hook(lambda m, i, o: passes.append(o.shape[0]))
    wf.trainer.add_event_handler("ITERATION_COMPLETED", lambda e: terms.append(dict(e.state.output[0])))
    wf.run()
    wf.finalize()
    assert passes and passes[0] == 2  # a batch of two images, two prompts each: two decoder passes, not four
    assert terms and all(o["competition"] > 0 and o["label"].shape[0] == 2 for o in terms)
    per_prompt = "denoiser.prompt_layers.1.conv.proj." if prompt_layers else "denoiser.prompt_fuse."
    assert any(k.startswith(per_prompt) for k in torch.load(out / "model.pt", weights_only=True))
    evaluation = tmp_path / "eval"
    overrides = infer_overrides(out / "model.pt", msd_dir, evaluation, eval_split="test", test_fraction=0.34)
    wf = workflow("evaluate.json", "infer", **overrides, shared_decoder=True, prompt_layers=prompt_layers)
    wf.initialize()
    wf.run()
    assert set(json.loads((evaluation / "metrics.json").read_text())["classes"]) == {
        "anterior hippocampus",
        "posterior hippocampus",
    }
    wf = workflow("evaluate.json", "infer", **{**overrides, "output_dir": str(tmp_path / "mismatch")})
    wf.initialize()
    with pytest.raises(Exception) as raised:
        wf.parser.get_parsed_content("network")
    assert "model.pt: checkpoint does not fit PromptedSegmenter" in error_chain(raised.value)
    assert ("prompt_layers" if prompt_layers else "prompt_fuse") in error_chain(raised.value)


def test_coordinate_channels_train_and_evaluate_through_the_configs(tmp_path, tiny_clip_config, msd_dir):
    """``--coordinate_channels True``: training crops, validation and evaluation all give the network the image and
    its voxels' positions (four channels), and a config without the switch refuses the model file, naming it."""
    out = tmp_path / "coords"
    wf = workflow("train.json", "train", **train_overrides(tiny_clip_config, msd_dir, out, coordinate_channels=True))
    wf.initialize()
    seen = []
    denoiser = wf.parser.get_parsed_content("network").denoiser
    denoiser.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    wf.run()
    wf.finalize()
    assert seen and set(seen) == {5}  # noisy mask, image, three positions: in the training steps and validation
    evaluation = tmp_path / "eval"
    overrides = infer_overrides(out / "model.pt", msd_dir, evaluation, eval_split="test", test_fraction=0.34)
    wf = workflow("evaluate.json", "infer", **overrides, coordinate_channels=True)
    wf.initialize()
    wf.run()
    assert json.loads((evaluation / "metrics.json").read_text())["cases"]
    wf = workflow("evaluate.json", "infer", **{**overrides, "output_dir": str(tmp_path / "mismatch")})
    wf.initialize()
    with pytest.raises(Exception) as raised:
        wf.parser.get_parsed_content("network")
    assert "model.pt: checkpoint does not fit PromptedSegmenter" in error_chain(raised.value)
    assert "coordinate_channels" in error_chain(raised.value)


def test_fine_tuning_starts_from_the_model_file_with_the_new_data_s_prompts(tmp_path, trained, tiny_clip_config):
    """``finetune`` loads ``finetune_model_path`` before the first step, all but the prompt embeddings, which come
    from the new folder's label names: with a zero learning rate the weights never move, so the saved (averaged)
    model is the file it started from, prompting for the new structures."""
    # one structure where the model has two: the prompt table (and its buffer) changes size
    other = write_msd(tmp_path / "liver", labels={"0": "background", "1": "liver"}, relabel={2: 0})
    out = tmp_path / "ft"
    overrides = train_overrides(
        tiny_clip_config, other, out, finetune=True, finetune_model_path=str(trained / "model.pt"), learning_rate=0.0
    )
    wf = workflow("train.json", "train", **overrides)
    wf.initialize()
    wf.run()
    wf.finalize()
    start, saved = (torch.load(p, weights_only=True) for p in (trained / "model.pt", out / "model.pt"))
    assert set(saved) == set(start)
    # the average of unchanged weights is them, up to float rounding (x * d + x * (1 - d))
    for k in start:
        if k != "prompt_embeddings":
            torch.testing.assert_close(saved[k], start[k], rtol=1e-5, atol=1e-6, msg=k)
    assert saved["prompt_embeddings"].shape[0] == 1 and start["prompt_embeddings"].shape[0] == 2
    assert torch.load(out / "model.prompts.pt", weights_only=True)["prompt_table"]["prompts"] == ["liver"]


def test_fine_tuning_names_a_model_file_of_another_architecture(tmp_path, trained, tiny_clip_config, msd_dir):
    overrides = train_overrides(
        tiny_clip_config,
        msd_dir,
        tmp_path / "ft",
        finetune=True,
        finetune_model_path=str(trained / "model.pt"),
        features=[4, 8, 32],
    )
    wf = workflow("train.json", "train", **overrides)
    wf.initialize()
    with pytest.raises(Exception) as err:
        wf.parser.get_parsed_content("load_finetune_weights")
    assert "model.pt: checkpoint does not fit" in error_chain(err.value)


def test_training_without_dataset_dir_generates_demo_data(tmp_path, tiny_clip_config):
    demo = tmp_path / "demo"
    overrides = train_overrides(tiny_clip_config, Path(""), tmp_path / "out", demo_dir=str(demo))
    overrides["dataset_dir"] = ""
    wf = workflow("train.json", "train", **overrides)
    wf.initialize()
    assert not demo.exists()
    assert (
        len(wf.parser.get_parsed_content("train#datalist")) == 14
    )  # 24 demo cases less 20 % val and 20 % test (5 each)
    assert (demo / "dataset.json").is_file()


def test_training_resumes_after_sigkill(tmp_path, tiny_clip_config, msd_dir):
    out = tmp_path / "run"
    overrides = train_overrides(tiny_clip_config, msd_dir, out, max_epochs=40, val_interval=100)
    args = ["run", "training", "--config_file", str(CONFIGS / "train.json"), "--meta_file", META]
    args += bundle_override_args(overrides)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "monai.bundle", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = out / "last.pt"
    deadline = time.time() + 300
    while time.time() < deadline and not last.exists() and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # at once: somewhere in the epochs after the first save
    proc.wait()
    assert last.exists(), "no resume file written before the kill"
    # a temporary the kill may have left, and one planted as if another killed run had left it: the next run
    # removes both (their writers are dead), and nothing else
    planted = out / f".model.pt{TEMP_MARK}-{_dead_pid()}-0123abcd"
    planted.write_bytes(b"half")
    keep = out / f"notes{TEMP_MARK}.txt"
    keep.write_text("not a temporary of atomic_path")
    state = torch.load(last, weights_only=True)["trainer"]
    per_epoch, saved_epochs = state["epoch_length"], state["iteration"] // state["epoch_length"]
    assert saved_epochs >= 1
    # the resumed run starts after the last saved epoch and runs only the remaining ones
    args[args.index("--max_epochs") + 1] = str(saved_epochs + 2)
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert f"resumed from {last} at epoch {saved_epochs}" in log
    assert f"Epoch: {saved_epochs + 1}/{saved_epochs + 2}" in log and f"Epoch: {saved_epochs}/" not in log
    assert torch.load(last, weights_only=True)["trainer"]["iteration"] == (saved_epochs + 2) * per_epoch
    assert (out / "model.pt").is_file()
    assert not list(out.rglob(f"*{TEMP_MARK}-*")), "a leftover of the killed run is still there"
    assert keep.read_text() == "not a temporary of atomic_path"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def test_training_names_every_bad_input_up_front_and_exits_cleanly(tmp_path, tiny_clip_config):
    from bundle.data import dataset_split

    msd = write_msd(tmp_path / "msd")
    overrides = train_overrides(tiny_clip_config, msd, tmp_path / "out")
    val = dataset_split(msd, "val", None, overrides["val_fraction"], overrides["test_fraction"], 0)
    train = dataset_split(msd, "train", None, overrides["val_fraction"], overrides["test_fraction"], 0)
    nan_image, short_label, val_label = Path(train[0]["image"]), Path(train[1]["label"]), Path(val[0]["label"])
    img = nib.load(str(nan_image))
    data = img.get_fdata().astype(np.float32)
    data[4, 5, 6] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), str(nan_image))
    lab = nib.load(str(short_label))
    nib.save(nib.Nifti1Image(np.asarray(lab.dataobj)[:-2], lab.affine), str(short_label))
    lab = nib.load(str(val_label))
    seven = np.asarray(lab.dataobj).copy()
    seven[1, 1, 1] = 7
    nib.save(nib.Nifti1Image(seven, lab.affine), str(val_label))
    before = _tree(msd)

    args = ["run", "training", "--config_file", str(CONFIGS / "train.json"), "--meta_file", META]
    args += bundle_override_args(overrides)
    result = bundle_cli(*args)
    log = result.stdout + result.stderr
    assert result.returncode == 1, (result.returncode, log[-3000:])  # an error, not SIGABRT (-6, 134)
    assert "terminate called" not in log
    assert "3 of 5 training and validation case(s) cannot be used" in log, log[-3000:]
    assert f"  - train: {nan_image}: 1 voxel(s) are NaN or infinite" in log
    assert f"  - train: {short_label}: label shape (30, 40, 32) differs from image" in log
    assert f"  - validate: {val_label}: label value(s) [7] not among the classes [0, 1, 2]" in log
    assert "Epoch" not in log  # before the first epoch
    assert not (tmp_path / "out").exists()  # nothing written
    assert _tree(msd) == before  # the input tree is unchanged


def test_inference_segments_a_folder_and_survives_bad_files(tmp_path, trained, msd_dir):
    images = tmp_path / "images"
    images.mkdir()
    good = sorted((msd_dir / "imagesTr").iterdir())[:2]
    for f in good:
        (images / f.name).write_bytes(f.read_bytes())
    (images / "truncated.nii.gz").write_bytes(good[0].read_bytes()[:300])
    nan_img = nib.load(str(good[0])).get_fdata().astype(np.float32)
    nan_img[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(nan_img, nib.load(str(good[0])).affine), str(images / "nan.nii.gz"))
    before = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in images.iterdir()}

    out = tmp_path / "out"
    wf = workflow("inference.json", "infer", **infer_overrides(trained / "model.pt", images, out))
    wf.initialize()
    assert not wf.check_properties()
    with pytest.raises(Exception) as err:
        wf.run()
    message = error_chain(err.value)
    assert "2 of 4 image(s) failed" in message, message
    assert "truncated.nii.gz" in message and "nan.nii.gz" in message and "NaN" in message
    for f in good:
        seg = nib.load(str(out / f.name.replace(".nii.gz", "_seg.nii.gz")))
        src = nib.load(str(f))
        assert seg.shape == src.shape
        np.testing.assert_allclose(seg.affine, src.affine, atol=1e-5)
        assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2}
    assert json.loads((out / "labels.json").read_text()) == {
        "0": "background",
        "1": "anterior hippocampus",
        "2": "posterior hippocampus",
    }
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    after = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in images.iterdir()}
    assert after == before  # inputs untouched


def test_inference_with_a_selected_prompt(tmp_path, trained, msd_dir):
    out = tmp_path / "out"
    overrides = infer_overrides(trained / "model.pt", msd_dir, out, prompts="Posterior Hippocampus")
    wf = workflow("inference.json", "infer", **overrides)
    wf.initialize()
    wf.run()
    assert json.loads((out / "labels.json").read_text()) == {"0": "background", "2": "posterior hippocampus"}
    seg = np.asarray(nib.load(str(next(out.glob("*_seg.nii.gz")))).dataobj)
    assert set(np.unique(seg)) <= {0, 2}

    wf = workflow("inference.json", "infer", **infer_overrides(trained / "model.pt", msd_dir, out, prompts="edema"))
    wf.initialize()
    with pytest.raises(Exception) as err:
        wf.run()
    message = error_chain(err.value)
    assert "UnknownPromptError" in message and "'edema'" in message and "anterior hippocampus" in message


def test_inference_rejects_a_checkpoint_of_another_architecture(tmp_path, trained, msd_dir):
    wf = workflow(
        "inference.json", "infer", **infer_overrides(trained / "model.pt", msd_dir, tmp_path, features=[4, 8, 32])
    )
    wf.initialize()
    with pytest.raises(Exception) as err:
        wf.parser.get_parsed_content("network")
    assert "model.pt: checkpoint does not fit PromptedSegmenter" in error_chain(err.value)
    assert "shape mismatch" in error_chain(err.value)


def test_evaluation_writes_metrics(tmp_path, trained, msd_dir):
    out = tmp_path / "eval"
    overrides = infer_overrides(trained / "model.pt", msd_dir, out, eval_split="test", test_fraction=0.34)
    wf = workflow("evaluate.json", "infer", **overrides)
    wf.initialize()
    wf.run()
    metrics = json.loads((out / "metrics.json").read_text())
    keys = {"dice", "iou", "hd95", "surface_dice", "precision", "recall"}
    assert set(metrics) == {"mean", "classes", "cases"} and set(metrics["mean"]) == keys
    assert set(metrics["classes"]) == {"anterior hippocampus", "posterior hippocampus"}
    assert len(metrics["cases"]) == 2  # 34 % of 6 cases
    for case in metrics["cases"]:
        assert Path(case["image"]).name.startswith("case_") and Path(case["image"]).parent.name == "imagesTr"
        assert set(case["anterior hippocampus"]) == keys | {"volume_ml", "reference_ml"}
        assert 0.0 <= case["posterior hippocampus"]["dice"] <= 1.0
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert rows[0] == "image,class,dice,iou,hd95,surface_dice,precision,recall,volume_ml,reference_ml"
    assert len(rows) == 1 + 2 * 2
    assert len(list((out / "predictions").glob("*_seg.nii.gz"))) == 2


def test_evaluation_with_mirroring_test_time_augmentation(tmp_path, trained, msd_dir):
    from bundle.inference import FlipEnsemble

    out = tmp_path / "eval"
    overrides = infer_overrides(trained / "model.pt", msd_dir, out, eval_split="test", tta_flips=[[], [0]])
    wf = workflow("evaluate.json", "infer", **overrides)
    wf.initialize()
    assert isinstance(wf.parser.get_parsed_content("network"), FlipEnsemble)
    wf.run()
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["cases"]) == 1 and 0.0 <= metrics["mean"]["dice"] <= 1.0


def test_a_suite_of_folders_trains_one_model_and_each_folder_evaluates_with_its_own_classes(tmp_path, tiny_clip_config):
    from monai.transforms import Compose

    from bundle.data import structure_volumes_ml
    from bundle.utils.checkpoint import load_prompt_table, model_structure_volumes
    from tests.helpers.bundle_runs import write_msd

    write_msd(tmp_path / "hippo", num_cases=5)
    # another folder numbering the same phantom its own way: 2 is the anterior part, 1 a structure of its own
    other = write_msd(
        tmp_path / "other",
        num_cases=5,
        labels={"0": "background", "1": "spleen", "2": "Anterior Hippocampus"},
        relabel={1: 2, 2: 1},
    )
    suite_file = tmp_path / "suite.json"
    suite_file.write_text(json.dumps({"datasets": ["hippo", "other"]}))
    out = tmp_path / "train"
    # windows centred on each class in turn, so small structures of large volumes are seen; folders sampled alike;
    # half of the absent prompts are the crop's own folder's
    overrides = train_overrides(
        tiny_clip_config,
        suite_file,
        out,
        max_epochs=1,
        crop_sampling="classes",
        dataset_balance=1.0,
        own_absent_prob=0.5,
    )
    wf = workflow("train.json", "train", **overrides)
    wf.initialize()
    vocabulary = {1: "anterior hippocampus", 2: "posterior hippocampus", 3: "spleen"}
    assert wf.parser.get_parsed_content("class_names") == vocabulary
    sampler = wf.parser.get_parsed_content("train#dataloader").sampler
    assert isinstance(sampler, torch.utils.data.WeightedRandomSampler) and sampler.replacement
    assert sampler.num_samples == len(wf.parser.get_parsed_content("train#datalist"))
    prompts = next(
        t for t in wf.parser.get_parsed_content("train#preprocessing").transforms if hasattr(t, "own_absent_prob")
    )
    assert prompts.folder_classes == {"hippo": {1, 2}, "other": {3, 1}} and prompts.own_absent_prob == 0.5
    # the other folder's labels arrive in the vocabulary's numbering
    load = Compose(wf.parser.get_parsed_content("load_transforms"))
    item = next(i for i in wf.parser.get_parsed_content("train#datalist") if i["dataset"] == "other")
    assert set(load(item)["label"].unique().tolist()) == {0, 1, 3}
    train_transforms = wf.parser.get_parsed_content("train#preprocessing").transforms
    crops = [type(t).__name__ for t in train_transforms if "Crop" in type(t).__name__]
    assert crops == ["RandCropByLabelClassesd"]
    wf.run()
    wf.finalize()
    assert load_prompt_table(out / "model.pt").prompts == list(vocabulary.values())
    # the model file records each structure's smallest training volume, the scale of the "absent" rule
    volumes = model_structure_volumes(out / "model.pt")
    assert volumes == structure_volumes_ml(suite_file, "train") and set(volumes) == set(vocabulary.values())

    # the model's classes are its prompt table's (not metadata.json's hippocampus); evaluating one folder scores
    # that folder's own classes, prompted by name
    ev = tmp_path / "eval"
    # and asks every image, one prompt at a time, for the model's classes that this folder does not label
    overrides = infer_overrides(out / "model.pt", other, ev, eval_split="all", absent_prompts="others")
    wf = workflow("evaluate.json", "infer", **overrides)
    wf.initialize()
    assert wf.parser.get_parsed_content("model_class_names") == vocabulary
    wf.run()
    metrics = json.loads((ev / "metrics.json").read_text())
    assert set(metrics["classes"]) == {"spleen", "anterior hippocampus"} and len(metrics["cases"]) == 5
    seg = nib.load(str(next((ev / "predictions").glob("*_seg.nii.gz")))).get_fdata()
    assert set(np.unique(seg)) <= {0, 1, 2}  # written in the folder's own numbering
    absent = json.loads((ev / "absent_prompts.json").read_text())
    assert absent["prompts"] == ["posterior hippocampus"] and absent["num_answers"] == 5
    volumes = np.array([c["volumes_ml"]["posterior hippocampus"] for c in absent["cases"]])
    voxel_ml = 1.0 * 1.2 * 1.0 / 1000  # the folder's voxels
    assert np.allclose(volumes / voxel_ml, np.round(volumes / voxel_ml))
    assert absent["summary"]["0"]["empty_fraction"] == np.mean(volumes == 0)
    assert absent["summary"]["5"]["empty_fraction"] == np.mean(volumes <= 5)
    # and under the rule the evaluation applies: answer_volume_fraction of the structure's smallest training volume
    threshold = 0.2 * model_structure_volumes(out / "model.pt")["posterior hippocampus"]
    assert absent["rule_ml"] == {"posterior hippocampus": pytest.approx(threshold)}
    assert absent["summary"]["rule"]["empty_fraction"] == np.mean(volumes <= threshold)


def test_thick_slices_train_and_evaluate_in_windows_planned_from_their_spacing(tmp_path, tiny_clip_config):
    """``thick_slice_ratio``: a thick-slice folder's crops and sliding windows are flat and wide (the same voxel
    budget), a near-isotropic folder's stay ``roi_size``, and batches never mix the two. Trained as the README's
    suite command trains: three prompts per crop, competing for each voxel."""
    from bundle.data import WindowBatchSampler
    from tests.helpers.bundle_runs import write_msd

    write_msd(tmp_path / "iso", num_cases=5)
    cardiac = {"0": "background", "1": "left ventricle", "2": "myocardium"}
    thick = write_msd(tmp_path / "thick", num_cases=5, spacing=(1.0, 1.2, 4.0), shape=(32, 40, 10), labels=cardiac)
    suite_file = tmp_path / "suite.json"
    suite_file.write_text(json.dumps({"datasets": ["iso", "thick"]}))
    out = tmp_path / "train"
    overrides = train_overrides(
        tiny_clip_config,
        suite_file,
        out,
        crop_sampling="classes",
        dataset_balance=1.0,
        thick_slice_ratio=3.0,
        max_anisotropy=8.0,
        prompts_per_image=3,
        **{"diffusion#competition_weight": 1.0},
    )
    wf = workflow("train.json", "train", **overrides)
    wf.initialize()
    terms = []
    wf.trainer.add_event_handler("ITERATION_COMPLETED", lambda e: terms.append(dict(e.state.output[0])))
    # SMALL's 3 levels under a stem of 2: windows are multiples of 8; 16^3 = 4096 voxels -> 8 slices x 16 x 16
    windows = {i["dataset"]: tuple(i["window"]) for i in wf.parser.get_parsed_content("train#datalist")}
    assert windows == {"iso": (16, 16, 16), "thick": (16, 16, 8)}
    loader = wf.parser.get_parsed_content("train#dataloader")
    assert isinstance(loader.batch_sampler, WindowBatchSampler) and loader.batch_sampler.weights is not None
    shapes = {tuple(batch["image"].shape[2:]) for _ in range(3) for batch in loader}
    assert shapes <= set(windows.values()) and shapes
    wf.run()
    wf.finalize()
    assert (out / "model.pt").is_file()
    assert terms and all(o["competition"] > 0 and o["label"].shape[0] == 3 for o in terms)

    ev = tmp_path / "eval"
    overrides = infer_overrides(
        out / "model.pt", thick, ev, eval_split="all", thick_slice_ratio=3.0, max_anisotropy=8.0
    )
    wf = workflow("evaluate.json", "infer", **overrides)
    wf.initialize()
    inferer = wf.parser.get_parsed_content("inferer")
    case = {"image": str(thick / "imagesTr" / "case_0.nii.gz"), "label": str(thick / "labelsTr" / "case_0.nii.gz")}
    image = wf.parser.get_parsed_content("preprocessing")(case)["image"]
    assert inferer.window_for(image[None]) == (16, 16, 8)
    wf.run()
    metrics = json.loads((ev / "metrics.json").read_text())
    assert len(metrics["cases"]) == 5 and 0.0 <= metrics["mean"]["dice"] <= 1.0


def test_cli_verify_net_in_out_and_torchscript_export(tmp_path, trained):
    overrides = bundle_override_args({k: v for k, v in SMALL.items() if k != "roi_size"})
    overrides += ["--text_dim", str(TINY_CLIP_DIM), "--num_inference_steps", "1"]
    result = bundle_cli(
        "verify_net_in_out",
        "network_def",
        "--meta_file",
        META,
        "--config_file",
        str(CONFIGS / "inference.json"),
        "--n",
        "2",
        *overrides,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ts = tmp_path / "model.ts"
    result = bundle_cli(
        "ckpt_export",
        "network_def",
        "--filepath",
        str(ts),
        "--ckpt_file",
        str(trained / "model.pt"),
        "--meta_file",
        META,
        "--config_file",
        str(CONFIGS / "inference.json"),
        "--use_trace",
        "True",
        "--input_shape",
        "[1, 1, 16, 16, 16]",
        *overrides,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    from bundle.diffusion import PromptedSegmenter
    from bundle.networks import SegOne

    net = PromptedSegmenter(
        SegOne(
            3,
            2,
            1,
            features=(4, 8, 16),
            with_timestep=True,
            text_dim=TINY_CLIP_DIM,
            stem_scale=2,
            refine_channels=8,
            refine_inputs=[1],
            decoder_inputs=[0],  # inference.json's: the noisy mask enters at the decoder
        ),
        prediction_type="logits",  # inference.json's
        num_prompts=2,
        embed_dim=TINY_CLIP_DIM,
        num_inference_steps=1,
    )
    net.load_state_dict(torch.load(trained / "model.pt", weights_only=True))
    scripted = torch.jit.load(str(ts))
    x = torch.rand(1, 1, 32, 16, 16)
    torch.testing.assert_close(scripted(x), net.eval()(x), rtol=1e-4, atol=1e-4)


def _torchrun_training(overrides: dict, nproc: int, env: dict) -> subprocess.CompletedProcess:
    """multi_gpu_train.json merged over train.json under torchrun, ``nproc`` processes."""
    args = ["--nnodes", "1", "--nproc_per_node", str(nproc), "-m", "monai.bundle", "run", "training"]
    args += ["--config_file", json.dumps([str(CONFIGS / "train.json"), str(CONFIGS / "multi_gpu_train.json")])]
    args += ["--meta_file", META, *bundle_override_args(overrides)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize("dataset_balance, thick_slice_ratio", [(0.0, 0.0), (1.0, 0.0), (1.0, 3.0)])
def test_multi_gpu_config_trains_with_two_processes_on_cpu(
    tmp_path, tiny_clip_config, msd_dir, dataset_balance, thick_slice_ratio
):
    """multi_gpu_train.json merged over train.json under torchrun: DDP with the gloo backend, 2 processes; with
    ``dataset_balance`` the distributed sampler is MONAI's weighted one; with ``thick_slice_ratio`` batches come
    from :class:`bundle.data.WindowBatchSampler`, shared by the ranks."""
    out = tmp_path / "ddp"
    # 2 validation cases, so each process validates one; 3 training cases, padded to 4 by the sampler
    overrides = train_overrides(
        tiny_clip_config,
        msd_dir,
        out,
        max_epochs=2,
        val_fraction=0.34,
        dataset_balance=dataset_balance,
        thick_slice_ratio=thick_slice_ratio,
    )
    # on the CPU even where there is a GPU: two processes would need two GPUs (NCCL takes one device per process)
    result = _torchrun_training(overrides, 2, {"CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    ckpt = torch.load(out / "model.pt", weights_only=True)
    last = torch.load(out / "last.pt", weights_only=True)
    # each process saw half of the (padded) 4 training cases per epoch: 1 batch of 2, for 2 epochs
    assert last["trainer"]["iteration"] == 2
    assert not any(k.startswith("module.") for k in ckpt)  # saved unwrapped, loadable without DDP


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (NCCL); the CPU test above runs gloo")
def test_multi_gpu_config_trains_with_one_process_per_gpu_on_nccl(tmp_path, tiny_clip_config, msd_dir):
    out = tmp_path / "ddp"
    overrides = train_overrides(tiny_clip_config, msd_dir, out, max_epochs=2, val_fraction=0.34)
    result = _torchrun_training(overrides, torch.cuda.device_count(), {})
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    ckpt = torch.load(out / "model.pt", weights_only=True, map_location="cpu")
    assert not any(k.startswith("module.") for k in ckpt)
    assert torch.load(out / "last.pt", weights_only=True, map_location="cpu")["trainer"]["iteration"] > 0


def test_shipped_model_segments_held_out_hippocampus_cases():
    """models/model.pt on real MSD hippocampus test-split cases (never used in training), through evaluate.json."""
    from tests.helpers.shared_data import shared_path

    data = shared_path("hippocampus")
    model = ROOT / "models" / "model.pt"
    if not model.is_file():
        pytest.skip(f"{model} not found")
    from monai.bundle import ConfigParser

    from bundle.data import dataset_split
    from bundle.evaluation import case_metrics

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "evaluate.json"))
    parser.read_meta(META)
    parser.update({"bundle_root": str(ROOT), "ckpt_path": str(model)})
    network, inferer = parser.get_parsed_content("network"), parser.get_parsed_content("inferer")
    preprocessing = parser.get_parsed_content("preprocessing")
    dice = []
    for item in dataset_split(data, "test")[:3]:
        d = preprocessing(item)
        with torch.no_grad():
            pred = inferer(d["image"][None], network)[0].argmax(0).numpy()
        m = case_metrics(pred, d["label"][0].numpy().astype(int), {1: "anterior", 2: "posterior"})
        dice.append((m["anterior"]["dice"] + m["posterior"]["dice"]) / 2)
    assert np.mean(dice) > 0.75, dice
