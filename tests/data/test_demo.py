"""Embedded demo data: deterministic phantoms, MSD layout, written atomically."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from bundle.data.demo import DEMO_LABELS, ensure_demo_dataset, make_phantom, write_demo_dataset


def test_phantom_is_deterministic_and_labelled():
    image, label = make_phantom(7)
    image2, label2 = make_phantom(7)
    assert np.array_equal(image, image2) and np.array_equal(label, label2)
    assert image.dtype == np.float32 and label.dtype == np.uint8 and image.shape == label.shape
    assert set(np.unique(label)) == {0, 1, 2}
    assert all(34 <= s <= 58 for s in image.shape)
    # the structure is brighter than its surroundings: the task is learnable
    assert image[label > 0].mean() > image[label == 0].mean() * 1.2
    other, _ = make_phantom(8)
    assert other.shape != image.shape or not np.array_equal(other, image)


def test_write_demo_dataset_msd_layout(tmp_path):
    out = write_demo_dataset(tmp_path / "demo", num_cases=3, seed=1)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"] == DEMO_LABELS and meta["numTraining"] == 3 and len(meta["training"]) == 3
    for item in meta["training"]:
        img = nib.load(str(out / item["image"]))
        lab = nib.load(str(out / item["label"]))
        assert img.shape == lab.shape and np.allclose(img.affine, lab.affine)
        assert set(np.unique(np.asarray(lab.dataobj))) <= {0, 1, 2}
    assert [p.name for p in tmp_path.iterdir()] == ["demo"], "temporary folders left behind"
    with pytest.raises(FileExistsError):
        write_demo_dataset(out, num_cases=1)


def test_ensure_demo_dataset_is_idempotent_and_safe(tmp_path):
    out = ensure_demo_dataset(tmp_path / "demo", num_cases=2)
    stamp = (out / "dataset.json").stat().st_mtime_ns
    assert ensure_demo_dataset(out, num_cases=2) == out
    assert (out / "dataset.json").stat().st_mtime_ns == stamp
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="refusing"):
        ensure_demo_dataset(foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_demo_data_command_writes_the_data_set_once(tmp_path, capsys):
    """``segone-demo-data`` (and ``scripts/make_demo_data.py``): the same ``main``."""
    from bundle.cli.demo_data import main

    out = tmp_path / "demo"
    assert main(["--output_dir", str(out), "--num_cases", "2", "--seed", "3"]) == 0
    assert capsys.readouterr().out.strip() == f"demo data set: {out} (2 cases)"
    assert json.loads((out / "dataset.json").read_text())["seed"] == 3
    stamp = (out / "dataset.json").stat().st_mtime_ns
    assert main(["--output_dir", str(out), "--num_cases", "5"]) == 0  # already there: left alone
    assert "(2 cases)" in capsys.readouterr().out and (out / "dataset.json").stat().st_mtime_ns == stamp
