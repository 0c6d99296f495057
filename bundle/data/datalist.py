"""Datalists: MSD-layout folders, a seeded train/val/test split, and image discovery for inference."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from bundle.utils.io import PathLike

__all__ = [
    "NIFTI_SUFFIXES",
    "BRATS2013_LABELS",
    "is_brats2013_folder",
    "load_msd_datalist",
    "split_datalist",
    "dataset_split",
    "find_images",
    "check_output_dir",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii")

# BraTS 2013 case folders (shared/data/brats_sample): the FLAIR image alone is the input, since the network takes one
# channel and edema, the largest compartment, shows on FLAIR; the four label values are the OTMultiClass ones
BRATS2013_LABELS = {"1": "necrosis", "2": "edema", "3": "non-enhancing tumour", "4": "enhancing tumour"}
BRATS2013_IMAGE, _BRATS2013_LABEL = "Flair_subtrMeanDivStd.nii.gz", "OTMultiClass.nii.gz"


def is_brats2013_folder(folder: PathLike) -> bool:
    """Whether ``folder`` holds BraTS 2013 case folders instead of an MSD ``dataset.json``.

    Args:
        folder: the folder.

    Returns:
        True without ``dataset.json`` and with at least one ``<case>/OTMultiClass.nii.gz`` (each case's
        ``Flair_subtrMeanDivStd.nii.gz`` is checked when the datalist is read).
    """
    root = Path(folder)
    return not (root / "dataset.json").is_file() and any((c / _BRATS2013_LABEL).is_file() for c in root.glob("*/"))


def _brats2013_items(root: Path) -> list[dict[str, str]]:
    cases = sorted(c for c in root.iterdir() if c.is_dir() and (c / _BRATS2013_LABEL).is_file())
    missing = [str(c / BRATS2013_IMAGE) for c in cases if not (c / BRATS2013_IMAGE).is_file()]
    if missing:
        raise FileNotFoundError(f"{root}: BraTS case folder(s) without {BRATS2013_IMAGE}: {', '.join(missing)}")
    return [{"image": str(c / BRATS2013_IMAGE), "label": str(c / _BRATS2013_LABEL)} for c in cases]


def load_msd_datalist(dataset_dir: PathLike, section: str = "training") -> list[dict[str, str]]:
    """``[{"image": path, "label": path}, ...]`` (absolute paths) from an MSD ``dataset.json``.

    A folder of BraTS 2013 cases (:func:`is_brats2013_folder`) lists its FLAIR images and label maps as its
    ``training`` section.

    Args:
        dataset_dir: the MSD-layout folder holding ``dataset.json``, or a folder of BraTS 2013 cases.
        section: the list to read (``training`` or ``test``).

    Returns:
        One dictionary per entry, with absolute ``image`` (and ``label``) paths.

    Raises:
        FileNotFoundError: no ``dataset.json``, or a listed file does not exist (all missing files are named).
        ValueError: ``dataset.json`` is not valid JSON or lacks ``section``.
    """
    root = Path(dataset_dir).expanduser().resolve()
    meta_path = root / "dataset.json"
    if section == "training" and root.is_dir() and is_brats2013_folder(root):
        return _brats2013_items(root)
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
    items: Sequence[Mapping[str, str]],
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    group_by: Callable[[str], str] | None = None,
) -> dict[str, list[dict[str, str]]]:
    """Seeded split into ``train``/``val``/``test``, independent of the order of ``items``, by patient if asked.

    Groups (one per patient with ``group_by``, else one per item) are ordered by their first image path and
    shuffled with ``seed``; the fractions count groups, so a patient's volumes are always in the same part. With one
    image per patient the split is the same as without ``group_by``.

    Args:
        items: the datalist.
        val_fraction: share of the validation part.
        test_fraction: share of the test part.
        seed: the shuffle's seed.
        group_by: image path -> patient id (e.g. :func:`~bundle.data.suite.patient_id`); ``None``: every item on
            its own.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``.

    Raises:
        ValueError: fractions out of range, or nothing left to train on.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"fractions must be in [0, 1) with a sum below 1, got val {val_fraction}, test {test_fraction}"
        )
    groups: dict[str, list[dict[str, str]]] = {}
    for item in sorted((dict(i) for i in items), key=lambda i: i["image"]):
        groups.setdefault(group_by(item["image"]) if group_by else item["image"], []).append(item)
    ordered = list(groups.values())
    random.Random(seed).shuffle(ordered)
    n = len(ordered)
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    if n and n - n_test - n_val < 1:
        unit = "patients" if group_by else "items"
        raise ValueError(f"{n} {unit} leave nothing to train on with val {val_fraction} and test {test_fraction}")
    parts = {"test": ordered[:n_test], "val": ordered[n_test : n_test + n_val], "train": ordered[n_test + n_val :]}
    return {k: [item for group in v for item in group] for k, v in parts.items()}


def dataset_split(
    dataset_dir: PathLike | Sequence[PathLike] | None,
    split: str,
    demo_dir: PathLike | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> list[dict[str, str]]:
    """One part (``train``, ``val``, ``test`` or ``all``) of the seeded split of an MSD folder's training cases.

    With an empty ``dataset_dir`` the embedded demo dataset at ``demo_dir`` is used, generated first when absent
    (so the bundle's training command works on a fresh clone). A suite (several folders, see
    :func:`~bundle.data.suite.dataset_dirs`) is split folder by folder, each with the same fractions and seed, and
    its items carry their folder's name under ``dataset``. Volumes of one patient
    (:func:`~bundle.data.suite.patient_id`) stay in one part.

    Args:
        dataset_dir: the MSD folder, a suite (list of folders, ``"a,b"``, or a suite file), or empty for the demo.
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
    from bundle.data.suite import dataset_dirs, patient_id

    if split not in ("train", "val", "test", "all"):
        raise ValueError(f"split must be one of train, val, test, all; got {split!r}")
    folders = dataset_dirs(dataset_dir)
    if not folders:
        if demo_dir is None:
            raise ValueError("no dataset_dir given and no demo_dir to generate the demo data in")
        from bundle.data.demo import ensure_demo_dataset

        folders = [Path(ensure_demo_dataset(demo_dir))]
    out: list[dict[str, str]] = []
    for folder in folders:
        items = load_msd_datalist(folder, "training")
        if split == "all":
            part = sorted(items, key=lambda i: i["image"])
        else:
            part = split_datalist(items, val_fraction, test_fraction, seed, group_by=patient_id)[split]
        out += [dict(i, dataset=folder.name) for i in part] if len(folders) > 1 else part
    return out


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


def check_output_dir(input_path: PathLike | Sequence[PathLike] | None, output_dir: PathLike) -> Path:
    """Refuses an output folder that is, or is inside, an input folder, so no output can overwrite an input.

    A single input file counts as its folder (an output beside it could replace a file of that folder); a suite
    (several folders, or a suite file) is checked folder by folder.

    Args:
        input_path: the input folder or file, or a suite (``--dataset_dir``); ``None`` or empty: nothing to check.
        output_dir: the output folder (``--output_dir``).

    Returns:
        ``output_dir``, resolved.

    Raises:
        ValueError: naming both folders, when ``output_dir`` is an input folder or inside one.
    """
    from bundle.data.suite import SUITE_FILE_SUFFIXES, dataset_dirs

    out = Path(output_dir).expanduser().resolve()
    if not input_path:
        return out
    single = isinstance(input_path, (str, Path)) and "," not in str(input_path)
    if single and not str(input_path).endswith(SUITE_FILE_SUFFIXES):
        sources = [Path(input_path).expanduser().resolve()]
    else:
        sources = dataset_dirs(input_path)
    for src in sources:
        if src.is_file():
            src = src.parent
        if out == src or src in out.parents:
            raise ValueError(
                f"output folder {out} is, or is inside, the input folder {src}: outputs could overwrite inputs; "
                "choose an --output_dir outside the input"
            )
    return out
