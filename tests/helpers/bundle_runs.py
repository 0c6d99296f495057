"""Small bundle runs for the tests: a synthetic MSD folder, shrunk config overrides, workflows and the bundle CLI.

Everything is shrunk by overrides (tiny text tower, 3-level network, one 16^3 window) as model-zoo CI does, so the
real configs and code paths run in seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from bundle.utils.config import BUNDLE_ROOT

__all__ = [
    "ROOT",
    "CONFIGS",
    "META",
    "SHAPE",
    "SMALL",
    "TINY_CLIP",
    "TINY_CLIP_DIM",
    "write_msd",
    "train_overrides",
    "infer_overrides",
    "workflow",
    "error_chain",
    "bundle_cli",
]

# a small open_clip architecture registered for the tests (tests/conftest.py)
TINY_CLIP = "segone-test-tiny-clip"
TINY_CLIP_DIM = 32

ROOT = BUNDLE_ROOT
CONFIGS = ROOT / "configs"
META = str(CONFIGS / "metadata.json")
SHAPE = (32, 40, 32)


def write_msd(
    root: Path,
    num_cases: int = 6,
    labels: dict[str, str] | None = None,
    relabel: dict[int, int] | None = None,
    spacing: tuple[float, float, float] = (1.0, 1.2, 1.0),
    shape: tuple[int, int, int] = SHAPE,
) -> Path:
    """A synthetic MSD folder of phantom cases (``case_<i>``).

    Args:
        root: the folder to create.
        num_cases: how many cases.
        labels: ``dataset.json``'s labels (default: the demo's hippocampus names).
        relabel: phantom label value -> value written (e.g. ``{1: 2, 2: 1}``), to give a folder its own numbering.
        spacing: the voxel spacing in mm (e.g. a thick third axis for thick slices).
        shape: each case's size in voxels (e.g. few slices on a thick axis, as a cine stack has).
    """
    from bundle.data.demo import DEMO_LABELS, make_phantom

    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [5.0, -3.0, 2.0]
    for i in range(num_cases):
        image, label = make_phantom(100 + i, shape=shape)
        if relabel:
            label = np.select([label == k for k in relabel], list(relabel.values()), label).astype(label.dtype)
        nib.save(nib.Nifti1Image(image, affine), str(root / "imagesTr" / f"case_{i}.nii.gz"))
        nib.save(nib.Nifti1Image(label, affine), str(root / "labelsTr" / f"case_{i}.nii.gz"))
        training.append({"image": f"./imagesTr/case_{i}.nii.gz", "label": f"./labelsTr/case_{i}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"labels": labels or DEMO_LABELS, "training": training, "test": []}))
    return root


# the network sizes every test run shares (a 3-level SegOne: sizes in multiples of 4; SegOne's default blocks, as
# the shipped [1, 1, 2, 2] needs four levels and at least 7 channels at the first)
SMALL = {"features": [4, 8, 16], "roi_size": [16, 16, 16], "encoder_blocks": [0, 1, 2], "decoder_blocks": [0, 1]}


def train_overrides(tiny_clip_config: str, dataset_dir: Path, output_dir: Path, **extra) -> dict:
    overrides = {
        **SMALL,
        "text_encoder#model_name": TINY_CLIP,
        "text_encoder#model_config": tiny_clip_config,
        "dataset_dir": str(dataset_dir),
        "output_dir": str(output_dir),
        "max_epochs": 1,
        "val_interval": 1,
        "batch_size": 2,
        "val_fraction": 0.2,
        "test_fraction": 0.2,
        "diffusion#val_steps": 1,
    }
    overrides.update(extra)
    return overrides


def infer_overrides(ckpt: Path, dataset_dir: Path, output_dir: Path, **extra) -> dict:
    overrides = {
        **SMALL,
        "text_dim": TINY_CLIP_DIM,
        "ckpt_path": str(ckpt),
        "dataset_dir": str(dataset_dir),
        "output_dir": str(output_dir),
        "num_inference_steps": 1,
    }
    overrides.update(extra)
    return overrides


def workflow(config: str, workflow_type: str, meta_file: str = META, **overrides):
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(
        config_file=str(CONFIGS / config),
        meta_file=meta_file,
        logging_file=False,
        workflow_type=workflow_type,
        **overrides,
    )
    return wf


def error_chain(exc: BaseException) -> str:
    """The messages of an exception and its causes (MONAI's config resolution wraps the original error)."""
    parts = []
    while exc is not None and len(parts) < 10:
        parts.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


def bundle_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
