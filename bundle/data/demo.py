"""Embedded demo data: a synthetic, MR-like hippocampus phantom in the MSD layout, generated on demand.

Each case is a small 3D volume (about 40x56x40 voxels, 1 mm) with smooth tissue texture, a multiplicative bias
field and noise, in which a curved tube, brighter than its surroundings and wrapped in a dark CSF-like rim, plays
the hippocampus: its front part is label 1 ("anterior hippocampus"), its back part label 2 ("posterior
hippocampus"), as in MSD Task04. Shapes, positions, curvature, contrast and noise vary per case from a seed, so
the task needs real segmentation, and a fresh clone can train and infer with no download. It is a toy: accuracy
on it says nothing about real MRI.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["DEMO_LABELS", "make_phantom", "write_demo_dataset", "ensure_demo_dataset"]

DEMO_LABELS: dict[str, str] = {"0": "background", "1": "anterior hippocampus", "2": "posterior hippocampus"}


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], grid: int, scale: float) -> np.ndarray:
    """Low-frequency random field: a coarse random grid upsampled (trilinear) to ``shape``."""
    from scipy.ndimage import zoom

    coarse = rng.normal(0.0, scale, size=(grid,) * len(shape))
    return zoom(coarse, [s / grid for s in shape], order=1)[tuple(slice(0, s) for s in shape)]


def make_phantom(seed: int, shape: None | tuple[int, int, int] = None) -> tuple[np.ndarray, np.ndarray]:
    """One phantom case.

    Args:
        seed: random seed; the same seed gives the same case.
        shape: volume shape; default drawn per case between 34x48x34 and 42x58x42.

    Returns:
        ``(image float32 [X, Y, Z], label uint8 [X, Y, Z])`` with labels 0, 1, 2.
    """
    rng = np.random.default_rng(seed)
    if shape is None:
        shape = (int(rng.integers(34, 43)), int(rng.integers(48, 59)), int(rng.integers(34, 43)))
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"), axis=-1)

    # centre line of the tube: runs along Y, bends in X and Z
    t = np.linspace(0.0, 1.0, 120, dtype=np.float32)
    length = shape[1] * rng.uniform(0.55, 0.75)
    y0 = (shape[1] - length) / 2 + rng.uniform(-3, 3)
    cx, cz = shape[0] / 2 + rng.uniform(-4, 4), shape[2] / 2 + rng.uniform(-4, 4)
    bend_x, bend_z = rng.uniform(-6, 6), rng.uniform(-4, 4)
    line = np.stack(
        [cx + bend_x * np.sin(np.pi * t), y0 + length * t, cz + bend_z * (t - 0.5) ** 2 * 4], axis=-1
    ).astype(np.float32)
    # radius: a thick head (anterior) tapering to a thin tail (posterior)
    radius = (rng.uniform(4.5, 6.0) * (1.0 - 0.55 * t) + 1.2).astype(np.float32)

    flat = grid.reshape(-1, 3)
    dist = np.full(flat.shape[0], np.inf, dtype=np.float32)
    along = np.zeros(flat.shape[0], dtype=np.float32)
    for i in range(0, len(t), 20):  # chunks keep memory small
        d = np.linalg.norm(flat[:, None, :] - line[None, i : i + 20], axis=-1) / radius[None, i : i + 20]
        j = d.argmin(axis=1)
        better = d[np.arange(len(j)), j] < dist
        dist[better] = d[np.arange(len(j)), j][better]
        along[better] = t[i + j[better]]
    dist, along = dist.reshape(shape), along.reshape(shape)

    split = rng.uniform(0.4, 0.55)
    label = np.zeros(shape, dtype=np.uint8)
    inside = dist <= 1.0
    label[inside & (along < split)] = 1
    label[inside & (along >= split)] = 2

    tissue = 0.45 + _smooth_field(rng, shape, 5, 0.06) + _smooth_field(rng, shape, 11, 0.03)
    image = tissue.astype(np.float32)
    contrast = rng.uniform(0.18, 0.3)
    image[label == 1] += contrast
    image[label == 2] += contrast * rng.uniform(0.8, 1.0)
    rim = (dist > 1.0) & (dist < 1.0 + rng.uniform(0.25, 0.45))
    image[rim & (rng.random(shape) < 0.7)] -= rng.uniform(0.15, 0.25)  # partial CSF rim: a boundary cue
    image *= np.exp(_smooth_field(rng, shape, 3, 0.12))  # bias field
    image += rng.normal(0.0, rng.uniform(0.02, 0.05), size=shape)
    image = np.clip(image, 0.0, None) * 400.0  # MR-like intensity scale
    return image.astype(np.float32), label


def write_demo_dataset(out_dir: str | os.PathLike, num_cases: int = 24, seed: int = 0) -> Path:
    """Write ``num_cases`` phantoms in MSD layout (``dataset.json``, ``imagesTr/``, ``labelsTr/``).

    The folder is assembled in a temporary sibling and renamed into place, so an interrupted run leaves nothing
    half-written at ``out_dir``.

    Args:
        out_dir: the data set folder to create; it must not exist (its parent is created).
        num_cases: number of phantoms, ``phantom_000.nii.gz`` on.
        seed: data set seed; case ``i`` is :func:`make_phantom` of ``seed * 100003 + i``.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        FileExistsError: when ``out_dir`` exists.
    """
    import nibabel as nib

    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{out} exists; remove it or use ensure_demo_dataset()")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        training = []
        for i in range(num_cases):
            image, label = make_phantom(seed * 100_003 + i)
            name = f"phantom_{i:03d}.nii.gz"
            nib.save(nib.Nifti1Image(image, np.eye(4)), str(tmp / "imagesTr" / name))
            nib.save(nib.Nifti1Image(label, np.eye(4)), str(tmp / "labelsTr" / name))
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        meta = {
            "name": "SegOne demo phantom (synthetic)",
            "description": "Synthetic MR-like volumes with a hippocampus-like tube; generated by bundle/data/demo.py",
            "modality": {"0": "MRI"},
            "labels": DEMO_LABELS,
            "license": "Apache-2.0 (generated)",
            "numTraining": num_cases,
            "seed": seed,
            "training": training,
            "test": [],
        }
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2))
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def ensure_demo_dataset(out_dir: str | os.PathLike, num_cases: int = 24, seed: int = 0) -> Path:
    """The demo dataset at ``out_dir``, generated first when it is absent.

    Args:
        out_dir: the data set folder; an existing one with a ``dataset.json`` is used as it is (whatever its
            ``num_cases`` and ``seed``), an empty one is replaced.
        num_cases: number of phantoms when it is generated.
        seed: data set seed when it is generated (see :func:`write_demo_dataset`).

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        FileExistsError: when ``out_dir`` exists, is not empty and has no ``dataset.json``.
    """
    out = Path(out_dir)
    if (out / "dataset.json").is_file():
        return out
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists but has no dataset.json: not a demo dataset, refusing to overwrite it")
    if out.exists():
        out.rmdir()
    return write_demo_dataset(out, num_cases=num_cases, seed=seed)
