"""Folder inference: failures name the file and the root cause (a full disk included), outputs never collide."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose, Lambdad

from bundle.data.demo import make_phantom
from bundle.inference import failure_reason
from bundle.text import PromptEmbeddingTable
from bundle.transforms import SaveLabelMapd
from bundle.utils.checkpoint import save_model
from bundle.utils.config import load_bundle_config
from tests.helpers.bundle_runs import SMALL, TINY_CLIP_DIM, error_chain, infer_overrides, workflow
from tests.helpers.images import meta_image


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_failure_reason_is_the_root_cause_not_monais_wrapper():
    with pytest.raises(RuntimeError) as info:
        Compose([Lambdad("image", _enospc)])({"image": 1})
    assert "applying transform" in str(info.value)
    assert failure_reason(info.value) == "OSError: [Errno 28] No space left on device"


def _label(name: str):
    return meta_image(np.ones((4, 5, 6), np.float32), name)


def test_outputs_of_two_sources_that_share_a_name_never_overwrite_each_other(tmp_path):
    writer = SaveLabelMapd("pred", tmp_path / "out", source_key=None)
    first = writer({"pred": _label(str(tmp_path / "a" / "x.nii"))})["pred_path"]
    assert first == str(tmp_path / "out" / "x_seg.nii.gz")
    before = Path(first).read_bytes()
    assert writer({"pred": _label(str(tmp_path / "a" / "x.nii"))})["pred_path"] == first  # the same source again
    for other in (tmp_path / "a" / "x.nii.gz", tmp_path / "b" / "x.nii"):
        label = meta_image(np.zeros((4, 5, 6), np.float32), str(other))
        with pytest.raises(FileExistsError, match=rf"{other}: its output .*x_seg\.nii\.gz was already written for"):
            writer({"pred": label})
    assert Path(first).read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x_seg.nii.gz"]


def test_brats_case_images_are_named_by_their_case_folders(tmp_path):
    from bundle.data.datalist import BRATS2013_IMAGE

    writer = SaveLabelMapd("pred", tmp_path / "out", source_key=None)
    for case in ("HG_0001", "HG_0002"):  # every case's image has the same file name
        writer({"pred": _label(str(tmp_path / "brats" / case / BRATS2013_IMAGE))})
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "HG_0001_Flair_subtrMeanDivStd_seg.nii.gz",
        "HG_0002_Flair_subtrMeanDivStd_seg.nii.gz",
    ]


def test_a_full_disk_names_the_cause_and_the_files_and_leaves_nothing(tmp_path, monkeypatch):
    writer = SaveLabelMapd("pred", tmp_path / "out", source_key=None)
    monkeypatch.setattr(nib, "save", _enospc)
    with pytest.raises(OSError, match=r"\[Errno 28\] .*src\.nii\.gz: writing .*src_seg\.nii\.gz failed: No space left"):
        writer({"pred": _label(str(tmp_path / "src.nii.gz"))})
    assert not list((tmp_path / "out").iterdir())


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    parser = load_bundle_config("inference.json", overrides={**SMALL, "text_dim": TINY_CLIP_DIM})
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def")
    table = PromptEmbeddingTable(
        dict(zip(["anterior hippocampus", "posterior hippocampus"], net.prompt_embeddings)), {}
    )
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_model(net, path, table, {"epoch": 0})
    return path


def test_folder_inference_on_a_full_disk_says_so_per_file(tmp_path, model_file, monkeypatch):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        nib.save(nib.Nifti1Image(make_phantom(i, shape=(24, 24, 24))[0], np.eye(4)), str(images / f"c{i}.nii.gz"))
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in images.iterdir()}
    out = tmp_path / "out"
    wf = workflow("inference.json", "infer", **infer_overrides(model_file, images, out))
    wf.initialize()
    monkeypatch.setattr(nib, "save", _enospc)
    with pytest.raises(Exception) as info:
        wf.run()
    message = error_chain(info.value)
    assert "2 of 2 image(s) failed" in message
    for i in range(2):
        line = next(x for x in message.splitlines() if x.startswith(f"  {images / f'c{i}.nii.gz'}: "))
        assert f"OSError: [Errno 28] {images / f'c{i}.nii.gz'}: writing {out / f'c{i}_seg.nii.gz'} failed" in line
        assert line.endswith("No space left on device")
    assert "Compose object" not in message
    assert sorted(p.name for p in out.iterdir()) == ["labels.json"]  # no partial label map
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in images.iterdir()} == before
