"""The bad-input corpus (issue #14): synthetic inputs built here that cannot be right, run through the bundle's
folder inference, evaluation and DICOM batch as a user runs them.

Each case asserts the exit status, that the message names the file and the problem, that the rest of the folder is
still processed, that no partial output remains for it, and that the input tree is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from bundle.data.demo import make_phantom
from bundle.dicom import safe_name
from bundle.dicom.batch import Manifest
from bundle.text import PromptEmbeddingTable
from bundle.utils.checkpoint import save_model
from bundle.utils.cli import bundle_override_args
from bundle.utils.config import load_bundle_config
from bundle.utils.io import TEMP_MARK
from tests.helpers.bundle_runs import CONFIGS, META, SMALL, TINY_CLIP_DIM, bundle_cli
from tests.helpers.dicom_series import write_mr_series
from tests.helpers.images import write_huge_nifti_header

# end-to-end runs of the real commands: not part of the fast lane (make test-fast)
pytestmark = pytest.mark.slow

PROMPTS = ["anterior hippocampus", "posterior hippocampus"]
SHAPE = (32, 40, 32)
STUDY = "1.2.826.0.1.3680043.8.498.7"


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def _image(seed: int) -> np.ndarray:
    return make_phantom(seed, shape=SHAPE)[0]


def _save(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), str(path))
    return path


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A small network with random weights in the shipped model-file format (the checks, not accuracy, are tested)."""
    parser = load_bundle_config("inference.json", overrides={**SMALL, "text_dim": TINY_CLIP_DIM})
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def")
    table = PromptEmbeddingTable(dict(zip(PROMPTS, net.prompt_embeddings)), {"model_name": "test"})
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_model(net, path, table, {"epoch": 0})
    return path


def _bundle_args(model_file: Path, dataset_dir: Path, output_dir: Path) -> list[str]:
    overrides = {**SMALL, "text_dim": TINY_CLIP_DIM, "num_inference_steps": 1}
    args = ["--meta_file", META, "--ckpt_path", str(model_file), "--dataset_dir", str(dataset_dir)]
    args += ["--output_dir", str(output_dir)]
    return args + bundle_override_args(overrides)


def _failure_line(log: str, path: Path) -> str:
    """The line of the final failure listing (``  <file>: <problem>``) that names ``path``."""
    lines = [line for line in log.splitlines() if line.startswith(f"  {path}: ")]
    assert lines, f"{path} is not named in the failure listing:\n{log[-4000:]}"
    return lines[-1]


# --- folder inference --------------------------------------------------------------------------------------------


def _truncated_nii(path: Path) -> Path:
    _save(path, _image(7))
    path.write_bytes(path.read_bytes()[: 352 + 1000])
    return path


def _truncated_gz(path: Path) -> Path:
    _save(path, _image(8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# file name -> (how it is made, the problem the message must name)
FOLDER_CASES = {
    "zeros.nii.gz": (lambda p: _save(p, np.zeros(SHAPE, np.float32)), "no signal: every voxel is 0"),
    "constant.nii.gz": (lambda p: _save(p, np.full(SHAPE, 7.0, np.float32)), "no signal: every voxel is 7"),
    "thick_slices.nii.gz": (lambda p: _save(p, _image(3), (0.3, 0.3, 6.0)), "too anisotropic"),
    "tiny_voxels.nii.gz": (lambda p: _save(p, _image(4), (0.01, 0.01, 0.01)), "implausible voxel size"),
    "series_4d.nii.gz": (lambda p: _save(p, np.stack([_image(5)] * 3, -1)), "a 4D image of shape (32, 40, 32, 3)"),
    "truncated.nii": (_truncated_nii, "truncated:"),
    "truncated_gz.nii.gz": (_truncated_gz, "EOFError"),
    "huge_header.nii": (write_huge_nifti_header, "shape (2000, 2000, 2000) is 8000000000 voxels, over the limit"),
    "clash.nii.gz": (lambda p: _save(p, _image(9)), "was already written for"),
}
GOOD = ["good_a.nii.gz", "good_b.nii.gz", "clash.nii"]  # clash.nii comes first and keeps its output


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory, model_file):
    root = tmp_path_factory.mktemp("folder")
    images = root / "images"
    for i, name in enumerate(GOOD):
        _save(images / name, _image(20 + i))
    for name, (make, _) in FOLDER_CASES.items():
        make(images / name)
    before = _tree(images)
    out = root / "out"
    result = bundle_cli(
        "run", "inference", "--config_file", str(CONFIGS / "inference.json"), *_bundle_args(model_file, images, out)
    )
    return {"images": images, "out": out, "result": result, "log": result.stdout + result.stderr, "before": before}


@pytest.mark.parametrize("name", sorted(FOLDER_CASES))
def test_folder_inference_refuses_a_bad_file_naming_it_and_goes_on(folder_run, name):
    assert folder_run["result"].returncode != 0
    line = _failure_line(folder_run["log"], folder_run["images"] / name)
    assert FOLDER_CASES[name][1] in line, line
    assert f"{len(FOLDER_CASES)} of {len(FOLDER_CASES) + len(GOOD)} image(s) failed" in folder_run["log"]
    out = folder_run["out"]
    for good in GOOD:  # the run went on
        stem = good.replace(".nii.gz", "").replace(".nii", "")
        assert nib.load(str(out / f"{stem}_seg.nii.gz")).shape == SHAPE
    stem = name.replace(".nii.gz", "").replace(".nii", "")
    written = sorted(p.name for p in out.iterdir())
    expected = sorted(["labels.json"] + [g.replace(".nii.gz", "").replace(".nii", "") + "_seg.nii.gz" for g in GOOD])
    assert written == expected  # no partial or temporary output of any bad file
    assert stem != "clash" or (out / "clash_seg.nii.gz").is_file()
    assert _tree(folder_run["images"]) == folder_run["before"]


def test_the_output_of_the_first_of_two_clashing_files_is_kept(folder_run):
    seg = np.asarray(nib.load(str(folder_run["out"] / "clash_seg.nii.gz")).dataobj)
    assert seg.shape == SHAPE  # written once, for clash.nii, and not overwritten by clash.nii.gz's


@pytest.mark.parametrize("inside", [False, True])
def test_output_folder_that_is_or_is_inside_the_input_is_refused(tmp_path, model_file, inside):
    images = tmp_path / "images"
    _save(images / "case.nii.gz", _image(1))
    _save(images / "case_seg.nii.gz", _image(2))  # an input that an output named from case.nii.gz would replace
    before = _tree(images)
    out = images / "segs" if inside else images
    result = bundle_cli(
        "run", "inference", "--config_file", str(CONFIGS / "inference.json"), *_bundle_args(model_file, images, out)
    )
    assert result.returncode != 0
    assert f"output folder {out} is, or is inside, the input folder {images}" in result.stdout + result.stderr
    assert _tree(images) == before and not (images / "segs").exists()


# --- evaluation --------------------------------------------------------------------------------------------------


def _label(value_map) -> np.ndarray:
    base = make_phantom(30, shape=SHAPE)[1].astype(np.float32)
    return value_map(base)


EVAL_CASES = {  # label file -> (label array, the problem the message must name)
    "outside.nii.gz": (lambda: _label(lambda b: np.where(b == 2, 5, b)), "label values [5] are not among"),
    "negative.nii.gz": (lambda: _label(lambda b: np.where(b == 2, -1, b)), "label values [-1] are not among"),
    "fractional.nii.gz": (lambda: _label(lambda b: b * 0.5), "non-integer values"),
    "labels_4d.nii.gz": (lambda: np.stack([_label(lambda b: b)] * 2, -1), "a 4D image of shape (32, 40, 32, 2)"),
}


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory, model_file):
    root = tmp_path_factory.mktemp("eval") / "Task"
    training = []
    for i in range(2):
        image, label = make_phantom(40 + i, shape=SHAPE)
        _save(root / "imagesTr" / f"good_{i}.nii.gz", image)
        _save(root / "labelsTr" / f"good_{i}.nii.gz", label)
        training.append({"image": f"./imagesTr/good_{i}.nii.gz", "label": f"./labelsTr/good_{i}.nii.gz"})
    for name, (make, _) in EVAL_CASES.items():
        _save(root / "imagesTr" / name, _image(50))
        _save(root / "labelsTr" / name, make())
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    for folder in ("siteA", "siteB"):  # the same file name in two folders
        image, label = make_phantom(60 + len(folder), shape=SHAPE)
        _save(root / folder / "images" / "same.nii.gz", image)
        _save(root / folder / "labels" / "same.nii.gz", label)
        training.append({"image": f"./{folder}/images/same.nii.gz", "label": f"./{folder}/labels/same.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background"}, "training": training}))
    before = _tree(root)
    out = root.parent / "out"
    args = [*_bundle_args(model_file, root, out), "--eval_split", "all"]
    result = bundle_cli("run", "evaluating", "--config_file", str(CONFIGS / "evaluate.json"), *args)
    return {"root": root, "out": out, "result": result, "log": result.stdout + result.stderr, "before": before}


@pytest.mark.parametrize("name", sorted(EVAL_CASES))
def test_evaluation_refuses_labels_outside_channel_def(eval_run, name):
    assert eval_run["result"].returncode != 0
    line = _failure_line(eval_run["log"], eval_run["root"] / "imagesTr" / name)
    assert str(eval_run["root"] / "labelsTr" / name) in line and EVAL_CASES[name][1] in line, line
    metrics = json.loads((eval_run["out"] / "metrics.json").read_text())
    scored = [Path(c["image"]).name for c in metrics["cases"]]
    assert name not in scored and {"good_0.nii.gz", "good_1.nii.gz"} <= set(scored)  # the others were scored
    assert not (eval_run["out"] / "predictions" / name.replace(".nii.gz", "_seg.nii.gz")).exists()
    assert _tree(eval_run["root"]) == eval_run["before"]


def test_evaluation_cases_with_one_file_name_never_overwrite_each_other(eval_run):
    line = _failure_line(eval_run["log"], eval_run["root"] / "siteB" / "images" / "same.nii.gz")
    assert f"was already written for {eval_run['root'] / 'siteA' / 'images' / 'same.nii.gz'}" in line, line
    predictions = sorted(p.name for p in (eval_run["out"] / "predictions").iterdir())
    assert predictions == ["good_0_seg.nii.gz", "good_1_seg.nii.gz", "same_seg.nii.gz"]
    assert not [p for p in eval_run["out"].rglob("*") if TEMP_MARK in p.name]


# --- DICOM batch -------------------------------------------------------------------------------------------------


def _volume(seed: int, shape=(20, 24, 12)) -> np.ndarray:
    return make_phantom(seed, shape=shape)[0] * 10  # about 190 to 3750


def _truncate_pixels(path: Path) -> None:
    import pydicom

    ds = pydicom.dcmread(str(path))
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    ds.save_as(str(path), write_like_original=False)


LONG = "1." + "2" * 98  # two UIDs (invalid, too long) that share their first 96 characters
DICOM_GOOD = {"1.2.3.4": "dot_a", "1.2.3.4.": "dot_b", LONG + "1": "long_a", LONG + "2": "long_b"}


@pytest.fixture(scope="module")
def dicom_run(tmp_path_factory, model_file):
    from bundle.cli.dicom_batch import main

    out = tmp_path_factory.mktemp("dicom") / "out"
    root = out / "in"  # the input inside the output folder
    for i, (uid, description) in enumerate(DICOM_GOOD.items()):
        write_mr_series(root / description, _volume(i), STUDY, uid, description=description)
    write_mr_series(root / "truncated", _volume(5), STUDY, STUDY + ".5", description="truncated")
    _truncate_pixels(root / "truncated" / "004.dcm")
    write_mr_series(root / "blank", np.zeros((20, 24, 12), np.float32), STUDY, STUDY + ".6", description="blank")
    write_mr_series(root / "thick", _volume(7), STUDY, STUDY + ".7", description="thick", spacing=(0.3, 0.3, 6.0))
    # input files whose names look like the batch's temporary files (of a process that no longer runs)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (root / f"notes{TEMP_MARK}.txt").write_text("mine")
    (root / "blank" / f".x.dcm{TEMP_MARK}-{int(dead.stdout)}-0123abcd").write_text("mine too")
    # a genuine leftover of a killed run in a series' output folder
    leftover = out / safe_name(STUDY) / safe_name("1.2.3.4") / f".seg.dcm{TEMP_MARK}-{int(dead.stdout)}-deadbeef"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a SEG")
    before = _tree(root)
    sets = [f"--set={k}={json.dumps(v)}" for k, v in {**SMALL, "text_dim": TINY_CLIP_DIM}.items()]
    args = ["--input_dir", str(root), "--output_dir", str(out), "--ckpt_path", str(model_file), "--no_progress", *sets]
    status = main(args)
    rows = {r["description"]: r for r in Manifest(out / "manifest.jsonl").rows if r.get("description")}
    rerun = main(args)
    all_rows = Manifest(out / "manifest.jsonl").rows
    return {
        "out": out,
        "root": root,
        "status": status,
        "rows": rows,
        "before": before,
        "rerun": rerun,
        "all_rows": all_rows,
        "leftover": leftover,
    }


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
@pytest.mark.parametrize(
    "description,problem",
    [
        ("truncated", "004.dcm: truncated pixel data (480 of 960 bytes)"),
        ("blank", "no signal: every voxel is 0"),
        ("thick", "too anisotropic"),
    ],
)
def test_dicom_batch_refuses_a_bad_series_naming_it(dicom_run, description, problem):
    assert dicom_run["status"] == 1 and dicom_run["rerun"] == 1
    row = dicom_run["rows"][description]
    assert row["status"] == "failed" and problem in row["reason"], row
    assert row["series_uid"] in row["reason"]
    assert not (dicom_run["out"] / row["series"]).exists()  # no partial output
    assert _tree(dicom_run["root"]) == dicom_run["before"]


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_dicom_series_uids_that_sanitise_alike_get_their_own_outputs(dicom_run):
    rows = [dicom_run["rows"][d] for d in DICOM_GOOD.values()]
    assert [r["status"] for r in rows] == ["done"] * 4
    folders = {r["series"] for r in rows}
    assert len(folders) == 4 and all(len(Path(f).name) <= 96 for f in folders)
    segs = [r["outputs"][0] for r in rows]
    assert len(set(segs)) == 4 and all(Path(s).is_file() for s in segs)
    import highdicom as hd

    for row in rows:  # the re-run skipped each as done, none was redone
        assert [r["status"] for r in dicom_run["all_rows"] if r.get("series") == row["series"]] == ["done"]
    for row in rows:  # each SEG references its own series
        assert str(hd.seg.segread(row["outputs"][0]).ReferencedSeriesSequence[0].SeriesInstanceUID) == row["series_uid"]


def test_dicom_leftover_cleanup_touches_only_the_batchs_own_temporary_files(dicom_run):
    assert not dicom_run["leftover"].exists()
    assert _tree(dicom_run["root"]) == dicom_run["before"]  # the input inside the output kept its look-alikes
