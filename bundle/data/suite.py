"""Suites: several MSD-layout folders trained as one data set, their label names as the prompt vocabulary.

A suite is named by ``--dataset_dir`` as a list of folders, a comma-separated string of folders, or a suite file
(``.json``/``.yaml``) that lists them (relative paths are relative to the file)::

    {"datasets": ["../shared/data/hippocampus", "../shared/data/chaos_t2", "../shared/data/acdc"]}

Each folder's ``dataset.json`` names its labels (``{"1": "liver", ...}``); the same name is the same structure in
every folder (``right ventricle`` in acdc and mscmr). The suite's vocabulary numbers the names ``1..K`` in order of
first appearance (folders in the given order, label values ascending), so a suite that starts with the hippocampus
keeps its classes 1 and 2. Every item of a suite carries its folder's name under ``dataset``, and
:class:`RemapSuiteLabelsd` rewrites its label values into the vocabulary's.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from bundle.text import normalize_prompt
from bundle.utils.io import PathLike
from bundle.utils.metadata import source_name

__all__ = [
    "SUITE_FILE_SUFFIXES",
    "dataset_class_names",
    "dataset_dirs",
    "dataset_labels",
    "structure_volumes_ml",
    "suite_vocabulary",
    "suite_label_maps",
    "patient_id",
    "RemapSuiteLabelsd",
    "STRUCTURE_REGIONS",
    "structure_region",
    "suite_absent_exclusions",
    "folder_sampling_weights",
]

SUITE_FILE_SUFFIXES = (".json", ".yaml", ".yml")

# The body region of each structure of the shared suite. A prompt is a safe "absent" example only for an image of
# another region: a hippocampus crop holds grey and white matter that its labels do not mark, and a cardiac cine
# stack often shows the liver dome (heart and abdomen are still kept apart; the model card says so). Structures not
# listed here have no region: their folder counts as a region of its own.
STRUCTURE_REGIONS: dict[str, str] = {
    **dict.fromkeys(
        (
            "anterior hippocampus",
            "posterior hippocampus",
            "necrosis",
            "edema",
            "non-enhancing tumour",
            "enhancing tumour",
            "cerebrospinal fluid",
            "grey matter",
            "white matter",
        ),
        "brain",
    ),
    **dict.fromkeys(("right ventricle", "myocardium", "left ventricle", "left atrium"), "heart"),
    **dict.fromkeys(("liver", "right kidney", "left kidney", "spleen"), "abdomen"),
}

# ACDC stores each patient's end-diastole and end-systole frames as two volumes: <patient>_frame01, _frame02
_FRAME_SUFFIX = re.compile(r"_frame\d+$")


def dataset_dirs(spec: PathLike | Sequence[PathLike] | None) -> list[Path]:
    """The MSD folders that ``spec`` names: one folder, several (a list, or one string with commas), or a suite file.

    Args:
        spec: a folder; a list of folders; ``"a,b"``; or a ``.json``/``.yaml`` file holding ``{"datasets": [...]}``
            or a bare list (paths relative to the file's folder). Empty or ``None``: no folder.

    Returns:
        The folders, resolved, in the given order.

    Raises:
        FileNotFoundError: a folder or the suite file does not exist (named).
        ValueError: a suite file that lists no folder, or two folders with the same name (the name tags items).
    """
    if spec is None or (isinstance(spec, (str, Path)) and not str(spec).strip()):
        return []
    if isinstance(spec, (str, Path)):
        text = str(spec).strip()
        parts = [p.strip() for p in text.split(",")] if "," in text else [text]
    else:
        parts = [str(p).strip() for p in spec]
    folders: list[Path] = []
    for part in filter(None, parts):
        path = Path(part).expanduser().resolve()
        if path.is_file() and path.name.endswith(SUITE_FILE_SUFFIXES):
            folders += _read_suite_file(path)
        elif path.is_dir():
            folders.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such data set folder or suite file")
    names = [f.name for f in folders]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"suite folders must have distinct names (they tag the items); repeated: {repeated}")
    return folders


def _read_suite_file(path: Path) -> list[Path]:
    try:
        if path.suffix == ".json":
            content = json.loads(path.read_text())
        else:
            import yaml

            content = yaml.safe_load(path.read_text())
    except Exception as e:  # json and yaml raise different types for the same problem: a file that is not valid
        raise ValueError(f"{path}: not a valid suite file ({e})") from e
    entries = content.get("datasets") if isinstance(content, Mapping) else content
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: a suite file holds a non-empty list of folders, or {{'datasets': [...]}}")
    folders = []
    for entry in entries:
        folder = (path.parent / str(entry)).expanduser().resolve()
        if not folder.is_dir():
            raise FileNotFoundError(f"{path}: lists {entry!r}, but {folder} is not a folder")
        folders.append(folder)
    return folders


def dataset_labels(dataset_dir: PathLike) -> dict[int, str]:
    """``{label value: structure name}`` of an MSD folder, from its ``dataset.json``'s ``labels`` (background dropped).

    A folder of BraTS 2013 cases has :data:`~bundle.data.datalist.BRATS2013_LABELS`.

    Names are normalised as prompts are (:func:`~bundle.text.normalize_prompt`), so they match prompt lookups.

    Args:
        dataset_dir: the MSD folder.

    Returns:
        The labels in ascending value order.

    Raises:
        FileNotFoundError: no ``dataset.json``.
        ValueError: no ``labels``, a value that is not an integer, or a name used twice.
    """
    from bundle.data.datalist import BRATS2013_LABELS, is_brats2013_folder

    meta_path = Path(dataset_dir).expanduser().resolve() / "dataset.json"
    if is_brats2013_folder(meta_path.parent):
        labels: Any = BRATS2013_LABELS
    elif not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: not found; a data set folder needs an MSD dataset.json")
    else:
        try:
            labels = json.loads(meta_path.read_text()).get("labels")
        except json.JSONDecodeError as e:
            raise ValueError(f"{meta_path}: invalid JSON ({e})") from e
    if not isinstance(labels, Mapping) or not labels:
        raise ValueError(f"{meta_path}: no 'labels' mapping (label value -> structure name)")
    try:
        named = {int(k): normalize_prompt(str(v)) for k, v in labels.items()}
    except ValueError as e:
        raise ValueError(f"{meta_path}: labels must map integer values to names ({e})") from e
    named = {k: v for k, v in sorted(named.items()) if k != 0}
    names = list(named.values())
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{meta_path}: label names used for two values: {repeated}")
    return named


def structure_volumes_ml(
    dataset_dir: PathLike | Sequence[PathLike] | None,
    split: str = "train",
    demo_dir: PathLike | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> dict[str, float]:
    """Per structure, the smallest volume (ml) it has in the label maps of one part of the split, where present.

    The scale of the "absent" rule (:func:`~bundle.transforms.answer_thresholds_ml`): training records it in the
    model file, so an answer far smaller than any real instance of the structure seen in training can be called
    absent. Labels where a structure is missing (volume 0) do not count.

    Args:
        dataset_dir: an MSD folder, a suite, or empty for the demo (as :func:`~bundle.data.dataset_split`).
        split: the part whose labels are measured (``train`` for a model's table).
        demo_dir: the demo data, when ``dataset_dir`` is empty.
        val_fraction: share of the validation part.
        test_fraction: share of the test part.
        seed: the split's seed.

    Returns:
        ``{structure name: ml}``, structures in the order of first appearance.

    Raises:
        ValueError: naming the file, when a label map cannot be read.
    """
    from monai.transforms import LoadImage

    from bundle.data.datalist import dataset_split
    from bundle.transforms.absent import voxel_volume_ml

    folders: list[Path] = dataset_dirs(dataset_dir)
    if not folders and demo_dir is not None:
        from bundle.data.demo import ensure_demo_dataset

        folders = [Path(ensure_demo_dataset(demo_dir))]
    loader = LoadImage(image_only=True)
    smallest: dict[str, float] = {}
    for folder in folders:
        items = dataset_split(folder, split, None, val_fraction, test_fraction, seed)
        labels = dataset_labels(folder)
        for item in items:
            if not item.get("label"):
                continue
            try:
                label = loader(item["label"])
            except Exception as e:  # noqa: BLE001 - any reader's failure is this file's problem
                raise ValueError(f"{item['label']}: cannot read the label map ({e})") from e
            values, counts = torch.unique(torch.as_tensor(label), return_counts=True)
            voxel_ml = voxel_volume_ml(label, label.dim())
            for value, count in zip(values.tolist(), counts.tolist()):
                name = labels.get(int(value))
                if name is not None:
                    smallest[name] = min(smallest.get(name, math.inf), count * voxel_ml)
    return smallest


def suite_vocabulary(spec: PathLike | Sequence[PathLike]) -> dict[int, str]:
    """The suite's classes: ``{1..K: name}``, names in order of first appearance across the folders.

    Args:
        spec: the suite (:func:`dataset_dirs`).

    Returns:
        The vocabulary; for one folder, its own labels (values kept, so its items need no renumbering).

    Raises:
        ValueError: ``spec`` names no folder.
    """
    folders = dataset_dirs(spec)
    if not folders:
        raise ValueError("a suite needs at least one data set folder")
    if len(folders) == 1:
        return dataset_labels(folders[0])
    names: list[str] = []
    for folder in folders:
        names += [n for n in dataset_labels(folder).values() if n not in names]
    return {i + 1: n for i, n in enumerate(names)}


def suite_label_maps(spec: PathLike | Sequence[PathLike]) -> dict[str, dict[int, int]]:
    """Per folder name, ``{its label value: the vocabulary's value}`` (background maps to 0 implicitly).

    Args:
        spec: the suite (:func:`dataset_dirs`).

    Returns:
        One mapping per folder, keyed by the folder's name; empty for a single folder, whose items are not tagged.
    """
    if len(dataset_dirs(spec)) < 2:
        return {}
    vocabulary = {n: v for v, n in suite_vocabulary(spec).items()}
    return {f.name: {v: vocabulary[n] for v, n in dataset_labels(f).items()} for f in dataset_dirs(spec)}


def structure_region(name: str) -> str | None:
    """The body region of a structure (:data:`STRUCTURE_REGIONS`), ``None`` when it is not listed.

    Args:
        name: a structure name or prompt (normalised as prompts are).
    """
    return STRUCTURE_REGIONS.get(normalize_prompt(name))


def suite_absent_exclusions(spec: PathLike | Sequence[PathLike]) -> dict[str, list[int]]:
    """Per folder name, the vocabulary values that must not be prompted as absent on its images.

    A structure that a folder does not label may still be in its images: grey matter in a hippocampus crop. Its
    empty target would teach the model to miss it. So a folder's images are asked for a structure of another folder
    as an absent example only when the two folders image different body regions (:data:`STRUCTURE_REGIONS`; a
    folder whose structures are not listed is a region of its own). A folder's own classes stay absent candidates:
    a crop without a kidney really holds none.

    Args:
        spec: the suite (:func:`dataset_dirs`).

    Returns:
        ``{folder name: sorted vocabulary values}``; empty for a single folder (its items are not tagged).
    """
    folders = dataset_dirs(spec)
    if len(folders) < 2:
        return {}
    vocabulary = {n: v for v, n in suite_vocabulary(folders).items()}
    labels = {f.name: set(dataset_labels(f).values()) for f in folders}
    regions = {
        name: {structure_region(n) or f"folder:{name}" for n in names} or {f"folder:{name}"}
        for name, names in labels.items()
    }
    exclusions: dict[str, list[int]] = {}
    for name in labels:
        near = [other for other in labels if other != name and regions[other] & regions[name]]
        excluded = {vocabulary[n] for other in near for n in labels[other] if n not in labels[name]}
        exclusions[name] = sorted(excluded)
    return exclusions


def folder_sampling_weights(
    datalist: Sequence[Mapping[str, Any]], balance: float, dataset_key: str = "dataset"
) -> list[float]:
    """Per-item sampling weights that move a suite's epochs from "every volume once" towards "every folder alike".

    A folder of ``n`` training volumes gets a share of the samples proportional to ``n ** (1 - balance)``: 0 keeps
    the volumes' own proportions (145 of the suite's 245 are hippocampus crops), 1 gives every folder the same share,
    0.5 the square root in between (as multilingual language models sample their corpora). For
    :class:`torch.utils.data.WeightedRandomSampler` or MONAI's ``DistributedWeightedRandomSampler``.

    Args:
        datalist: the training items; those without ``dataset_key`` (one folder, unlabelled teacher images) form a
            group of their own.
        balance: in ``[0, 1]``.
        dataset_key: the entry naming an item's folder.

    Returns:
        One weight per item, ``count(item's folder) ** -balance``.

    Raises:
        ValueError: when ``balance`` is outside ``[0, 1]``.
    """
    if not 0.0 <= balance <= 1.0:
        raise ValueError(f"balance must be in [0, 1], got {balance}")
    folders = [str(item.get(dataset_key)) for item in datalist]
    counts = {f: folders.count(f) for f in set(folders)}
    return [float(counts[f]) ** -balance for f in folders]


def patient_id(image_path: str) -> str:
    """The patient an image belongs to: its folder and file name, without the NIfTI suffix and a trailing
    ``_frameNN``.

    Volumes of one patient (ACDC's end-diastole and end-systole frames) share it, so a split keeps them together;
    the folder keeps case folders apart whose files share a name (BraTS ``<case>/Flair_subtrMeanDivStd.nii.gz``).

    Args:
        image_path: the image file.

    Returns:
        ``imagesTr/acdc_001`` for ``.../imagesTr/acdc_001_frame02.nii.gz``.
    """
    path = Path(image_path)
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return f"{path.parent.name}/{_FRAME_SUFFIX.sub('', name)}"


class RemapSuiteLabelsd(MapTransform):
    """Rewrites an item's label values from its folder's numbering into the suite vocabulary's.

    Items without ``dataset_key`` (one folder, not a suite) pass unchanged.

    Args:
        keys: the label maps.
        label_maps: ``{folder name: {its value: vocabulary value}}`` (:func:`suite_label_maps`).
        dataset_key: the entry naming the item's folder.
        allow_missing_keys: don't raise an exception when a key is missing.

    Raises:
        ValueError: when called, naming the label file, for an unknown folder name or a label value that its
            ``dataset.json`` does not name.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_maps: Mapping[str, Mapping[int, int]],
        dataset_key: str = "dataset",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_maps = {str(k): {int(a): int(b) for a, b in v.items()} for k, v in label_maps.items()}
        self.dataset_key = dataset_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """
        Args:
            data: an item with integer label maps under ``keys`` and its folder's name under ``dataset_key``.

        Returns:
            A shallow copy with the label maps renumbered (same type, shape and metadata).
        """
        d = dict(data)
        name = d.get(self.dataset_key)
        if name is None:
            return d
        if name not in self.label_maps:
            raise ValueError(f"{name!r} is not a folder of this suite ({sorted(self.label_maps)})")
        mapping = self.label_maps[name]
        for key in self.key_iterator(d):
            label = d[key]
            values = torch.as_tensor(np.asarray(label) if not isinstance(label, torch.Tensor) else label).unique()
            unknown = sorted(int(v) for v in values.tolist() if int(v) != 0 and int(v) not in mapping)
            if unknown:
                raise ValueError(
                    f"{source_name(d, key)}: label values {unknown} are not named in {name}'s dataset.json "
                    f"(named: {sorted(mapping)})"
                )
            if all(a == b for a, b in mapping.items()):
                continue
            out = label.clone() if isinstance(label, torch.Tensor) else np.array(label, copy=True)
            for src, dst in mapping.items():
                out[label == src] = dst
            d[key] = out
        return d


def dataset_class_names(
    dataset_dir: PathLike | Sequence[PathLike] | None, model_classes: Mapping[int, str]
) -> dict[int, str]:
    """The classes of a run on ``dataset_dir``: ``{label value: name}`` (background excluded).

    - No folder (the demo data), or one folder labelled with the same values as the model's classes: the model's
      classes, so a Task04 download whose ``dataset.json`` says ``Anterior`` keeps the bundle's prompts.
    - One folder whose ``dataset.json`` names no structure (no ``labels``, or background alone): the model's classes.
    - One other folder: its own labels (:func:`dataset_labels`).
    - A suite of several folders: its vocabulary (:func:`suite_vocabulary`).

    Args:
        dataset_dir: the folder or suite (:func:`dataset_dirs`), or empty.
        model_classes: the model's classes: ``metadata.json``'s ``channel_def`` for training
            (:func:`~bundle.utils.metadata.class_names_from_metadata`), a model file's for evaluation
            (:func:`~bundle.utils.checkpoint.model_class_names`).

    Returns:
        The classes, in label order.
    """
    bundle_classes = {int(k): str(v) for k, v in model_classes.items()}
    folders = dataset_dirs(dataset_dir)
    if not folders:
        return bundle_classes
    if len(folders) > 1:
        return suite_vocabulary(folders)
    try:
        own = dataset_labels(folders[0])
    except ValueError:  # a dataset.json without labels: the model's classes, as before suites
        return bundle_classes
    return bundle_classes if not own or set(own) == set(bundle_classes) else own
