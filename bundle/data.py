"""Data: MSD-layout datalists, a seeded split, image discovery for inference, and input checks.

Errors name the file and the problem: a missing image, a label whose shape or geometry differs from its image,
non-finite intensities, a volume of the wrong dimensionality.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Dict, Hashable, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from bundle.transforms import source_name

__all__ = ["load_msd_datalist", "split_datalist", "dataset_split", "find_images", "CheckInputd", "NIFTI_SUFFIXES"]

NIFTI_SUFFIXES = (".nii.gz", ".nii")
PathLike = Union[str, os.PathLike]


def load_msd_datalist(dataset_dir: PathLike, section: str = "training") -> List[Dict[str, str]]:
    """``[{"image": path, "label": path}, ...]`` (absolute paths) from an MSD ``dataset.json``.

    Raises:
        FileNotFoundError: no ``dataset.json``, or a listed file does not exist (all missing files are named).
        ValueError: ``dataset.json`` is not valid JSON or lacks ``section``.
    """
    root = Path(dataset_dir).expanduser().resolve()
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: not found; --dataset_dir must be an MSD-layout folder")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta_path}: invalid JSON ({e})") from e
    entries = meta.get(section)
    if not isinstance(entries, list):
        raise ValueError(f"{meta_path}: no '{section}' list")
    items: List[Dict[str, str]] = []
    missing: List[str] = []
    for entry in entries:
        if isinstance(entry, str):  # MSD "test" entries are bare image paths
            entry = {"image": entry}
        item = {k: str((root / v).resolve()) for k, v in entry.items() if k in ("image", "label")}
        if "image" not in item:
            raise ValueError(f"{meta_path}: an entry of '{section}' has no image: {entry}")
        missing += [p for p in item.values() if not Path(p).is_file()]
        items.append(item)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise FileNotFoundError(f"{meta_path}: {len(missing)} listed file(s) missing: {shown}")
    return items


def split_datalist(
    items: Sequence[Mapping[str, str]], val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0
) -> Dict[str, List[Dict[str, str]]]:
    """Seeded split into ``train``/``val``/``test``, independent of the order of ``items``.

    Items are sorted by image path before a seeded shuffle, so the same data and seed always give the same split.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"fractions must be in [0, 1) with a sum below 1, got val {val_fraction}, test {test_fraction}")
    ordered = sorted((dict(i) for i in items), key=lambda i: i["image"])
    random.Random(seed).shuffle(ordered)
    n = len(ordered)
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    if n and n - n_test - n_val < 1:
        raise ValueError(f"{n} items leave nothing to train on with val {val_fraction} and test {test_fraction}")
    return {
        "test": ordered[:n_test],
        "val": ordered[n_test : n_test + n_val],
        "train": ordered[n_test + n_val :],
    }


def dataset_split(
    dataset_dir: Optional[PathLike],
    split: str,
    demo_dir: Optional[PathLike] = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> List[Dict[str, str]]:
    """One part (``train``, ``val``, ``test`` or ``all``) of the seeded split of an MSD folder's training cases.

    With an empty ``dataset_dir`` the embedded demo dataset at ``demo_dir`` is used, generated first when absent
    (so the bundle's training command works on a fresh clone).
    """
    if not dataset_dir:
        if demo_dir is None:
            raise ValueError("no dataset_dir given and no demo_dir to generate the demo data in")
        from bundle.demo import ensure_demo_dataset

        dataset_dir = ensure_demo_dataset(demo_dir)
    items = load_msd_datalist(dataset_dir, "training")
    if split == "all":
        return sorted(items, key=lambda i: i["image"])
    parts = split_datalist(items, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    if split not in parts:
        raise ValueError(f"split must be one of train, val, test, all; got {split!r}")
    return parts[split]


def find_images(path: PathLike) -> List[Dict[str, str]]:
    """Images to segment: an MSD folder (``imagesTs/``, else ``imagesTr/``), a folder of NIfTI files, or one file."""
    p = Path(path).expanduser().resolve()
    if p.is_file():
        if not p.name.endswith(NIFTI_SUFFIXES):
            raise ValueError(f"{p}: not a NIfTI file ({'/'.join(NIFTI_SUFFIXES)})")
        return [{"image": str(p)}]
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: no such file or folder")
    for sub in ("imagesTs", "imagesTr"):
        if (p / sub).is_dir() and any((p / sub).iterdir()):
            p = p / sub
            break
    files = sorted(f for f in p.iterdir() if f.is_file() and f.name.endswith(NIFTI_SUFFIXES) and not f.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"{p}: no NIfTI images (*.nii, *.nii.gz)")
    return [{"image": str(f)} for f in files]


class CheckInputd(MapTransform):
    """Fails early, naming the file, on inputs that would otherwise give silent garbage.

    Checks, after loading with channel-first layout: the image has ``spatial_dims`` spatial dimensions; intensities
    are finite; the label (when present) has the image's spatial shape and affine (within ``atol``).

    Args:
        keys: image key(s) to check for dimensionality and finite values.
        label_key: label key compared with the first image key, if present in the data.
        spatial_dims: expected number of spatial dimensions.
        atol: tolerance of the affine comparison, in mm.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        label_key: Optional[str] = "label",
        spatial_dims: int = 3,
        atol: float = 1e-3,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_key = label_key
        self.spatial_dims = spatial_dims
        self.atol = atol

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        d = dict(data)
        first: Optional[Hashable] = None
        for key in self.key_iterator(d):
            first = first if first is not None else key
            img = torch.as_tensor(d[key])
            name = source_name(d, key)
            if img.dim() != self.spatial_dims + 1:
                raise ValueError(
                    f"{name}: expected a {self.spatial_dims}D image (channel-first shape with {self.spatial_dims} "
                    f"spatial dims), got shape {tuple(img.shape)}"
                )
            if img.is_floating_point() and not torch.isfinite(img).all():
                bad = int((~torch.isfinite(img)).sum())
                raise ValueError(f"{name}: {bad} voxel(s) are NaN or infinite")
        if first is not None and self.label_key and self.label_key in d:
            img, lab = d[first], d[self.label_key]
            if tuple(lab.shape[1:]) != tuple(img.shape[1:]):
                raise ValueError(
                    f"{source_name(d, self.label_key)}: label shape {tuple(lab.shape[1:])} differs from image "
                    f"{source_name(d, first)} shape {tuple(img.shape[1:])}"
                )
            a_img, a_lab = getattr(img, "affine", None), getattr(lab, "affine", None)
            if a_img is not None and a_lab is not None and not np.allclose(
                np.asarray(a_img), np.asarray(a_lab), atol=self.atol
            ):
                raise ValueError(
                    f"{source_name(d, self.label_key)}: label geometry (affine) differs from image "
                    f"{source_name(d, first)}:\n{np.asarray(a_lab)}\nvs\n{np.asarray(a_img)}"
                )
        return d
