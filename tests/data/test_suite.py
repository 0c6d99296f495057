"""Suites of MSD folders: folder lists and suite files, the vocabulary of label names, renumbering, patient splits."""

from __future__ import annotations

import json
from collections import Counter

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from bundle.data import (
    RemapSuiteLabelsd,
    dataset_class_names,
    dataset_dirs,
    dataset_labels,
    dataset_split,
    folder_sampling_weights,
    load_msd_datalist,
    patient_id,
    split_datalist,
    structure_region,
    structure_volumes_ml,
    suite_absent_exclusions,
    suite_label_maps,
    suite_vocabulary,
)
from bundle.utils.metadata import class_names_from_metadata
from tests.helpers.bundle_runs import META
from tests.helpers.shared_data import shared_path


def _folder(root, labels, cases=("case_0", "case_1")):
    """An MSD folder with tiny labelled volumes using every label value of ``labels``."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    values = [int(v) for v in labels if int(v)]
    training = []
    for name in cases:
        label = np.zeros((4, 4, 4), np.uint8)
        for i, v in enumerate(values):
            label[i % 4, :, i // 4] = v
        nib.save(
            nib.Nifti1Image(np.random.rand(4, 4, 4).astype(np.float32), np.eye(4)),
            str(root / "imagesTr" / f"{name}.nii.gz"),
        )
        nib.save(nib.Nifti1Image(label, np.eye(4)), str(root / "labelsTr" / f"{name}.nii.gz"))
        training.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"labels": labels, "training": training}))
    return root


@pytest.fixture
def suite(tmp_path):
    brain = _folder(tmp_path / "brain", {"0": "background", "1": "Grey  Matter", "2": "white matter"})
    heart = _folder(
        tmp_path / "heart", {"0": "background", "1": "left ventricle", "2": "white matter", "3": "myocardium"}
    )
    return brain, heart


def test_dataset_dirs_reads_lists_comma_strings_and_suite_files(tmp_path, suite):
    brain, heart = suite
    assert dataset_dirs(None) == [] and dataset_dirs("") == [] and dataset_dirs(str(brain)) == [brain]
    assert dataset_dirs([brain, str(heart)]) == [brain, heart]
    assert dataset_dirs(f"{heart}, {brain}") == [heart, brain]
    (tmp_path / "suite.json").write_text(json.dumps({"datasets": ["heart", "brain"]}))
    assert dataset_dirs(tmp_path / "suite.json") == [heart, brain]  # relative to the file
    (tmp_path / "suite.yaml").write_text("- brain\n- heart\n")
    assert dataset_dirs(str(tmp_path / "suite.yaml")) == [brain, heart]


def test_dataset_dirs_errors_name_the_problem(tmp_path, suite):
    brain, _ = suite
    with pytest.raises(FileNotFoundError, match="nowhere: no such data set folder or suite file"):
        dataset_dirs(f"{brain},{tmp_path / 'nowhere'}")
    (tmp_path / "other").mkdir()
    _folder(tmp_path / "other" / "brain", {"1": "x"})
    with pytest.raises(ValueError, match=r"distinct names .*\['brain'\]"):
        dataset_dirs([brain, tmp_path / "other" / "brain"])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not a valid suite file"):
        dataset_dirs(tmp_path / "bad.json")
    (tmp_path / "empty.json").write_text(json.dumps({"datasets": []}))
    with pytest.raises(ValueError, match="empty.json: a suite file holds a non-empty list"):
        dataset_dirs(tmp_path / "empty.json")
    (tmp_path / "missing.json").write_text(json.dumps(["brain", "lungs"]))
    with pytest.raises(FileNotFoundError, match="missing.json: lists 'lungs'"):
        dataset_dirs(tmp_path / "missing.json")


def test_dataset_labels_are_normalised_prompts_and_errors_name_the_file(tmp_path, suite):
    assert dataset_labels(suite[0]) == {1: "grey matter", 2: "white matter"}
    bad = tmp_path / "bad"
    bad.mkdir()
    with pytest.raises(FileNotFoundError, match="bad/dataset.json: not found"):
        dataset_labels(bad)
    (bad / "dataset.json").write_text(json.dumps({"training": []}))
    with pytest.raises(ValueError, match="bad/dataset.json: no 'labels' mapping"):
        dataset_labels(bad)
    (bad / "dataset.json").write_text(json.dumps({"labels": {"one": "liver"}}))
    with pytest.raises(ValueError, match="labels must map integer values"):
        dataset_labels(bad)
    (bad / "dataset.json").write_text(json.dumps({"labels": {"1": "Liver", "2": "liver"}}))
    with pytest.raises(ValueError, match=r"names used for two values: \['liver'\]"):
        dataset_labels(bad)


def test_vocabulary_numbers_names_by_first_appearance_and_shares_equal_names(suite):
    brain, heart = suite
    assert suite_vocabulary([brain, heart]) == {
        1: "grey matter",
        2: "white matter",
        3: "left ventricle",
        4: "myocardium",
    }
    assert suite_label_maps([brain, heart]) == {"brain": {1: 1, 2: 2}, "heart": {1: 3, 2: 2, 3: 4}}
    # one folder keeps its own values: its items are not tagged and need no renumbering
    assert suite_vocabulary(heart) == {1: "left ventricle", 2: "white matter", 3: "myocardium"}
    assert suite_label_maps(heart) == {}
    with pytest.raises(ValueError, match="at least one data set folder"):
        suite_vocabulary("")


def test_class_names_of_a_run_follow_the_bundle_the_folder_or_the_suite(tmp_path, suite):
    brain, heart = suite
    bundle_classes = class_names_from_metadata(META)
    assert bundle_classes == {1: "anterior hippocampus", 2: "posterior hippocampus"}
    assert dataset_class_names("", bundle_classes) == bundle_classes
    # a folder numbered like the bundle is the bundle's task (a Task04 download names its labels "Anterior")
    task04 = _folder(tmp_path / "task04", {"0": "background", "1": "Anterior", "2": "Posterior"})
    assert dataset_class_names(task04, bundle_classes) == bundle_classes
    assert dataset_class_names(heart, bundle_classes) == {1: "left ventricle", 2: "white matter", 3: "myocardium"}
    assert dataset_class_names([brain, heart], bundle_classes) == suite_vocabulary([brain, heart])


def test_absent_exclusions_keep_structures_of_the_same_region(tmp_path):
    hippo = _folder(tmp_path / "hippo", {"0": "background", "1": "anterior hippocampus"})
    tissue = _folder(tmp_path / "tissue", {"0": "background", "1": "grey matter", "2": "white matter"})
    abdomen = _folder(tmp_path / "abdomen", {"0": "background", "1": "liver"})
    custom = _folder(tmp_path / "custom", {"0": "background", "1": "widget"})
    spec = [hippo, tissue, abdomen, custom]
    vocabulary = {n: v for v, n in suite_vocabulary(spec).items()}
    exclusions = suite_absent_exclusions(spec)
    assert structure_region("Grey  Matter") == "brain" and structure_region("widget") is None
    # brain folders never ask each other's structures as absent; other regions and unlisted folders do
    assert exclusions["hippo"] == [vocabulary["grey matter"], vocabulary["white matter"]]
    assert exclusions["tissue"] == [vocabulary["anterior hippocampus"]]
    assert exclusions["abdomen"] == [] and exclusions["custom"] == []
    assert suite_absent_exclusions(hippo) == {}


def test_folder_sampling_weights_move_folder_shares_from_volumes_to_equal():
    datalist = [{"dataset": "big"}] * 16 + [{"dataset": "small"}] * 4 + [{}]

    def shares(balance):
        w = folder_sampling_weights(datalist, balance)
        assert len(w) == len(datalist) and all(x > 0 for x in w)
        return {f: sum(x for x, d in zip(w, datalist) if d.get("dataset") == f) / sum(w) for f in ("big", "small")}

    assert shares(0.0) == pytest.approx({"big": 16 / 21, "small": 4 / 21})
    assert shares(1.0) == pytest.approx({"big": 1 / 3, "small": 1 / 3})  # the untagged item is a group too
    assert shares(0.5)["big"] / shares(0.5)["small"] == pytest.approx(2.0)  # sqrt(16) / sqrt(4)
    with pytest.raises(ValueError, match="balance must be in"):
        folder_sampling_weights(datalist, -0.1)


def test_patient_id_groups_frames_and_keeps_case_folders_apart():
    assert patient_id("/d/imagesTr/acdc_001_frame02.nii.gz") == "imagesTr/acdc_001"
    assert patient_id("/d/imagesTr/acdc_001_frame01.nii") == "imagesTr/acdc_001"
    assert patient_id("/d/imagesTr/hippocampus_001.nii.gz") == "imagesTr/hippocampus_001"
    assert patient_id("/d/pat1/Flair.nii.gz") != patient_id("/d/pat2/Flair.nii.gz")


def test_split_by_patient_keeps_a_patients_volumes_together_and_matches_the_plain_split():
    items = [{"image": f"/d/p{p:02d}_frame0{f}.nii.gz"} for p in range(20) for f in (1, 2)]
    parts = split_datalist(items, 0.1, 0.2, seed=0, group_by=patient_id)
    assert [len(parts[k]) for k in ("train", "val", "test")] == [28, 4, 8]  # 14, 2 and 4 patients
    for part in parts.values():  # both frames of each patient in the part
        assert set(Counter(patient_id(i["image"]) for i in part).values()) == {2}
    assert len({patient_id(i["image"]) for part in parts.values() for i in part}) == 20
    # one volume per patient: the same split as without grouping (the hippocampus split stays what it was)
    single = [{"image": f"/d/case_{i:03d}.nii.gz"} for i in range(50)]
    assert split_datalist(single, 0.1, 0.2, seed=3, group_by=patient_id) == split_datalist(single, 0.1, 0.2, seed=3)
    with pytest.raises(ValueError, match="2 patients leave nothing to train on"):
        split_datalist(items[:4], 0.3, 0.3, group_by=patient_id)


def test_suite_split_is_per_folder_and_tags_items(tmp_path):
    a = _folder(tmp_path / "a", {"1": "x"}, cases=[f"a_{i}" for i in range(10)])
    b = _folder(tmp_path / "b", {"1": "y"}, cases=[f"b_{i:02d}_frame0{f}" for i in range(5) for f in (1, 2)])
    parts = {s: dataset_split(f"{a},{b}", s, val_fraction=0.2, test_fraction=0.2) for s in ("train", "val", "test")}
    for items in parts.values():
        assert all(i["dataset"] == ("a" if "/a/" in i["image"] else "b") for i in items)
    assert Counter(i["dataset"] for i in parts["test"]) == {"a": 2, "b": 2}  # a fifth of 10 volumes, of 5 patients
    # each folder's part is its own split: the same as splitting it alone
    alone = [{k: v for k, v in i.items() if k != "dataset"} for i in parts["test"] if i["dataset"] == "a"]
    assert alone == dataset_split(a, "test", val_fraction=0.2, test_fraction=0.2)
    assert "dataset" not in dataset_split(a, "test", val_fraction=0.2, test_fraction=0.2)[0]
    assert len(dataset_split([a, b], "all")) == 20


def test_remap_renumbers_tagged_labels_and_names_the_file_on_an_unnamed_value(suite):
    brain, heart = suite
    remap = RemapSuiteLabelsd("label", suite_label_maps([brain, heart]))
    label = MetaTensor(torch.tensor([[[0, 1], [2, 3]]], dtype=torch.uint8), meta={"filename_or_obj": "/x/l.nii.gz"})
    out = remap({"label": label, "dataset": "heart"})
    assert out["label"].tolist() == [[[0, 3], [2, 4]]] and isinstance(out["label"], MetaTensor)
    assert out["label"].meta["filename_or_obj"] == "/x/l.nii.gz" and label.tolist() == [[[0, 1], [2, 3]]]
    assert remap({"label": label[:, :1, :1], "dataset": "brain"})["label"] is not None
    assert remap({"label": label})["label"] is label  # not a suite item
    with pytest.raises(ValueError, match=r"/x/l.nii.gz: label values \[3\] are not named in brain's dataset.json"):
        remap({"label": label, "dataset": "brain"})
    with pytest.raises(ValueError, match="'lungs' is not a folder of this suite"):
        remap({"label": label, "dataset": "lungs"})
    assert remap({"label": np.array([[1, 3]]), "dataset": "heart"})["label"].tolist() == [[3, 4]]


def test_brats2013_case_folders_read_as_a_data_set(tmp_path):
    root = tmp_path / "brats"
    for case in ("pat1", "pat2"):
        (root / case).mkdir(parents=True)
        for name in ("Flair_subtrMeanDivStd.nii.gz", "OTMultiClass.nii.gz"):
            nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(root / case / name))
    items = load_msd_datalist(root)
    assert [i["image"] for i in items] == [str(root / c / "Flair_subtrMeanDivStd.nii.gz") for c in ("pat1", "pat2")]
    assert dataset_labels(root) == {1: "necrosis", 2: "edema", 3: "non-enhancing tumour", 4: "enhancing tumour"}
    (root / "pat2" / "Flair_subtrMeanDivStd.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="pat2/Flair_subtrMeanDivStd.nii.gz"):
        load_msd_datalist(root)


def test_the_shared_mri_suite_shares_cardiac_names_and_splits_acdc_by_patient():
    folders = [
        shared_path(n) for n in ("hippocampus", "brats_sample", "ibsr", "chaos_t2", "mscmr", "acdc", "left_atrium")
    ]
    vocabulary = suite_vocabulary(folders)
    assert len(vocabulary) == 2 + 4 + 3 + 4 + 3 + 1 and list(vocabulary.values())[:2] == [
        "anterior hippocampus",
        "posterior hippocampus",
    ]
    maps = suite_label_maps(folders)
    assert maps["acdc"] == maps["mscmr"] and maps["hippocampus"] == {1: 1, 2: 2}
    parts = {s: dataset_split(folders, s) for s in ("train", "val", "test")}
    patients = {s: {patient_id(i["image"]) for i in v if i["dataset"] == "acdc"} for s, v in parts.items()}
    assert not patients["test"] & patients["train"] and not patients["val"] & patients["train"]
    assert len(patients["test"]) == 5  # a fifth of 24 patients
    assert Counter(i["dataset"] for i in parts["test"])["hippocampus"] == 42  # the hippocampus split is unchanged


def test_a_folder_that_names_no_structure_is_scored_with_the_models_classes(tmp_path):
    model = {1: "anterior hippocampus", 2: "posterior hippocampus"}
    bare = _folder(tmp_path / "bare", {"0": "background"})
    assert dataset_class_names(bare, model) == model
    (bare / "dataset.json").write_text(json.dumps({"training": []}))
    assert dataset_class_names(bare, model) == model


def _volumes_folder(root, labels, voxels_per_case, spacing=(2.0, 1.0, 1.0)):
    """An MSD folder whose case ``i`` labels ``voxels_per_case[i][v]`` voxels with value ``v``."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i, voxels in enumerate(voxels_per_case):
        label = np.zeros(64, np.uint8)
        start = 0
        for value, count in voxels.items():
            label[start : start + count] = value
            start += count
        affine = np.diag([*spacing, 1.0])
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), affine), str(root / "imagesTr" / f"c{i}.nii.gz"))
        nib.save(nib.Nifti1Image(label.reshape(4, 4, 4), affine), str(root / "labelsTr" / f"c{i}.nii.gz"))
        training.append({"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"labels": labels, "training": training}))
    return root


def test_structure_volumes_are_the_smallest_present_volume_over_a_suites_labels(tmp_path):
    # 2 ul voxels; "liver" is 10 and 6 voxels, "spleen" 0 (absent: not counted) and 3
    a = _volumes_folder(tmp_path / "a", {"1": "Liver", "2": "spleen"}, [{1: 10, 2: 0}, {1: 6, 2: 3}])
    # the same name in another folder with its own value and voxel size (1 ul): the smaller counts
    b = _volumes_folder(tmp_path / "b", {"1": "kidney", "2": "liver"}, [{2: 5, 1: 7}], spacing=(1.0, 1.0, 1.0))
    volumes = structure_volumes_ml([a, b], "all")
    assert volumes == pytest.approx({"liver": 0.005, "spleen": 0.006, "kidney": 0.007})
    assert structure_volumes_ml(a, "all") == pytest.approx({"liver": 0.012, "spleen": 0.006})
    # training records the training part only: the split's own items
    (train,) = dataset_split(a, "train", val_fraction=0.0, test_fraction=0.5)
    expected = {"liver": 0.02} if train["label"].endswith("c0.nii.gz") else {"liver": 0.012, "spleen": 0.006}
    assert structure_volumes_ml(a, "train", val_fraction=0.0, test_fraction=0.5) == pytest.approx(expected)
    (a / "labelsTr" / "c1.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(ValueError, match="c1.nii.gz: cannot read the label map"):
        structure_volumes_ml(a, "all")
