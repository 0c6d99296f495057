"""The teacher's scripts: cache filling (labels, student prompts with unlabelled cases) and the ablation."""

from __future__ import annotations

import numpy as np
import pytest

from bundle.utils.config import BUNDLE_ROOT
from tests.helpers.sam2 import SIZE

# end-to-end: not part of the fast lane (make test-fast)
pytestmark = pytest.mark.slow


def _fill_script():
    import bundle.cli.fill_teacher_cache

    return bundle.cli.fill_teacher_cache


def test_cache_filling_script_fills_once(tmp_path, checkpoint, capsys):
    from tests.helpers.bundle_runs import write_msd

    script = _fill_script()
    data = write_msd(tmp_path / "msd", num_cases=5)
    args = [
        "--dataset_dir",
        str(data),
        "--sam2_checkpoint",
        str(checkpoint),
        "--image_size",
        str(SIZE),
        "--cache_dir",
        str(tmp_path / "cache"),
    ]
    assert script.main(args) == 0
    first = capsys.readouterr().out
    cases = int(first.split(" training cases")[0])
    assert 0 < cases < 5  # the training split only
    assert f"{2 * cases} computed, 0 already cached" in first
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2 * cases  # one per case and class
    assert script.main(args) == 0
    assert f"0 computed, {2 * cases} already cached" in capsys.readouterr().out
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2 * cases


def test_cache_filling_script_with_student_prompts_and_unlabelled_cases(tmp_path, checkpoint, capsys):
    """The default train.json network with the released model as the student, as a user would run it."""
    from tests.helpers.bundle_runs import ROOT, write_msd

    data = write_msd(tmp_path / "msd", num_cases=3)
    unlabelled = _write_unlabelled(tmp_path / "unlabelled", seed=300)
    args = [
        "--dataset_dir",
        str(data),
        "--sam2_checkpoint",
        str(checkpoint),
        "--image_size",
        str(SIZE),
        "--cache_dir",
        str(tmp_path / "cache"),
        "--prompt_source",
        "student",
        "--box_mode",
        "volume",
        "--student_checkpoint",
        str(ROOT / "models" / "model.pt"),
        "--unlabelled_dir",
        str(unlabelled),
        "--set",
        "teacher#prompt=box+points",
        "--set",
        "teacher#num_points=2",
    ]
    assert _fill_script().main(args) == 0
    printed = capsys.readouterr().out
    cases = int(printed.split(" training cases")[0])
    assert "(2 unlabelled)" in printed and f"{2 * cases} computed, 0 already cached" in printed
    entries = list((tmp_path / "cache").glob("*.npz"))
    assert len(entries) == 2 * cases
    ious = [np.load(p)["iou"] for p in entries]
    assert sum(np.isfinite(i).any() for i in ious) >= cases  # the student's masks placed prompts in most entries


def _write_unlabelled(folder, seed: int, num_cases: int = 2):
    """A folder of phantom images without labels (the unlabelled_dir of student mode)."""
    import nibabel as nib

    from bundle.data.demo import make_phantom
    from tests.helpers.bundle_runs import SHAPE

    folder.mkdir()
    for i in range(num_cases):
        nib.save(nib.Nifti1Image(make_phantom(seed + i, shape=SHAPE)[0], np.eye(4)), str(folder / f"u_{i}.nii.gz"))
    return folder


@pytest.mark.slow
def test_ablation_script_runs_both_arms(tmp_path, checkpoint, tiny_clip_config):
    """The with/without comparison end to end on tiny settings (plumbing only: a random SAM2 gives no result)."""
    import json
    import subprocess
    import sys

    from tests.helpers.bundle_runs import infer_overrides, train_overrides, write_msd

    data = write_msd(tmp_path / "msd", num_cases=5)
    # val_interval past max_epochs: no validation runs, and the table says so rather than failing
    train = train_overrides(tiny_clip_config, data, tmp_path, val_interval=5, **{"teacher_training#iou_threshold": 0.0})
    evaluate = infer_overrides(
        tmp_path, data, tmp_path, val_fraction=train["val_fraction"], test_fraction=train["test_fraction"]
    )
    skip = {"dataset_dir", "output_dir", "max_epochs", "ckpt_path"}

    def as_set(d):
        return [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in d.items() if k not in skip]

    args = [
        "--dataset_dir",
        str(data),
        "--sam2_checkpoint",
        str(checkpoint),
        "--image_size",
        str(SIZE),
        "--max_epochs",
        "1",
        "--output_dir",
        str(tmp_path / "ablate"),
        "--teacher_set",
        "teacher_training#loss=bce",
    ]
    for item in as_set(train):
        args += ["--set", item]
    for item in as_set(evaluate):
        args += ["--eval_set", item]
    script = BUNDLE_ROOT / "scripts" / "experiments" / "ablate_teacher.py"
    result = subprocess.run(
        [sys.executable, str(script), *args], cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("| with")]
    assert [line.split(" |")[0] for line in table] == ["| without teacher", "| with SAM2 teacher"]
    assert all(line.split(" | ")[1] == "no validation" for line in table)
    without, with_teacher = tmp_path / "ablate" / "without_teacher", tmp_path / "ablate" / "with_SAM2_teacher"
    for run in (without, with_teacher):
        assert (run / "model.pt").is_file() and (run / "evaluation" / "metrics.json").is_file()
    assert not (without / "teacher_cache").exists() and list((with_teacher / "teacher_cache").glob("*.npz"))
