"""Datalists: MSD-layout folders, a seeded train/val/test split, and image discovery for inference."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

from bundle.utils.io import PathLike

__all__ = ["NIFTI_SUFFIXES", "load_msd_datalist", "split_datalist", "dataset_split", "find_images", "check_output_dir"]

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def load_msd_datalist(dataset_dir: PathLike, section: str = "training") -> list[dict[str, str]]:
    """``[{"image": path, "label": path}, ...]`` (absolute paths) from an MSD ``dataset.json``.

    Args:
        dataset_dir: the MSD-layout folder holding ``dataset.json``.
        section: the list to read (``training`` or ``test``).

    Returns:
        One dictionary per entry, with absolute ``image`` (and ``label``) paths.

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
    items: list[dict[str, str]] = []
    missing: list[str] = []
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
) -> dict[str, list[dict[str, str]]]:
    """Seeded split into ``train``/``val``/``test``, independent of the order of ``items``.

    Items are sorted by image path before a seeded shuffle, so the same data and seed always give the same split.

    Args:
        items: the datalist.
        val_fraction: share of the validation part.
        test_fraction: share of the test part.
        seed: the shuffle's seed.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``.

    Raises:
        ValueError: fractions out of range, or nothing left to train on.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"fractions must be in [0, 1) with a sum below 1, got val {val_fraction}, test {test_fraction}"
        )
    ordered = sorted((dict(i) for i in items), key=lambda i: i["image"])
    random.Random(seed).shuffle(ordered)
    n = len(ordered)
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    if n and n - n_test - n_val < 1:
        raise ValueError(f"{n} items leave nothing to train on with val {val_fraction} and test {test_fraction}")
    return {"test": ordered[:n_test], "val": ordered[n_test : n_test + n_val], "train": ordered[n_test + n_val :]}


def dataset_split(
    dataset_dir: PathLike | None,
    split: str,
    demo_dir: PathLike | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> list[dict[str, str]]:
    """One part (``train``, ``val``, ``test`` or ``all``) of the seeded split of an MSD folder's training cases.

    With an empty ``dataset_dir`` the embedded demo dataset at ``demo_dir`` is used, generated first when absent
    (so the bundle's training command works on a fresh clone).

    Args:
        dataset_dir: the MSD folder, or empty for the demo data.
        split: ``train``, ``val``, ``test`` or ``all``.
        demo_dir: where the demo data is (generated when absent).
        val_fraction: share of the validation part.
        test_fraction: share of the test part.
        seed: the split's seed.

    Returns:
        The items of that part.

    Raises:
        ValueError: an unknown split, or neither ``dataset_dir`` nor ``demo_dir``.
    """
    if not dataset_dir:
        if demo_dir is None:
            raise ValueError("no dataset_dir given and no demo_dir to generate the demo data in")
        from bundle.data.demo import ensure_demo_dataset

        dataset_dir = ensure_demo_dataset(demo_dir)
    items = load_msd_datalist(dataset_dir, "training")
    if split == "all":
        return sorted(items, key=lambda i: i["image"])
    parts = split_datalist(items, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    if split not in parts:
        raise ValueError(f"split must be one of train, val, test, all; got {split!r}")
    return parts[split]


def find_images(path: PathLike) -> list[dict[str, str]]:
    """Images to segment: an MSD folder (``imagesTs/``, else ``imagesTr/``), a folder of NIfTI files, or one file.

    Two files whose outputs would share a name (``x.nii`` and ``x.nii.gz``) are both listed; the writer
    (:class:`~bundle.transforms.SaveLabelMapd`) refuses the second rather than overwrite the first.

    Args:
        path: the folder or file.

    Returns:
        ``[{"image": absolute path}, ...]`` sorted by name (hidden files left out).

    Raises:
        FileNotFoundError: no such path, or a folder without NIfTI images.
        ValueError: a file that is not NIfTI.
    """
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
    files = sorted(
        f for f in p.iterdir() if f.is_file() and f.name.endswith(NIFTI_SUFFIXES) and not f.name.startswith(".")
    )
    if not files:
        raise FileNotFoundError(f"{p}: no NIfTI images (*.nii, *.nii.gz)")
    return [{"image": str(f)} for f in files]


def check_output_dir(input_path: PathLike | None, output_dir: PathLike) -> Path:
    """Refuses an output folder that is, or is inside, the input folder, so no output can overwrite an input.

    A single input file counts as its folder (an output beside it could replace a file of that folder).

    Args:
        input_path: the input folder or file (``--dataset_dir``); ``None`` or empty: nothing to check.
        output_dir: the output folder (``--output_dir``).

    Returns:
        ``output_dir``, resolved.

    Raises:
        ValueError: naming both folders, when ``output_dir`` is ``input_path``'s folder or inside it.
    """
    out = Path(output_dir).expanduser().resolve()
    if not input_path:
        return out
    src = Path(input_path).expanduser().resolve()
    if src.is_file():
        src = src.parent
    if out == src or src in out.parents:
        raise ValueError(
            f"output folder {out} is, or is inside, the input folder {src}: outputs could overwrite inputs; "
            "choose an --output_dir outside the input"
        )
    return out
