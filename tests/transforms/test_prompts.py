"""Prompt transforms: sampling present/absent classes, binary targets, label checks, embeddings."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from monai.data import MetaTensor

from bundle.text import PromptEmbeddingTable, UnknownPromptError
from bundle.transforms import EmbedPromptd, RandPromptd
from bundle.utils.config import BUNDLE_ROOT
from bundle.utils.metadata import class_names_from_metadata

ROOT = BUNDLE_ROOT
NAMES = {1: "anterior hippocampus", 2: "posterior hippocampus"}


def _label(values=(1,)) -> torch.Tensor:
    lab = torch.zeros(1, 8, 8, 8, dtype=torch.uint8)
    for i, v in enumerate(values):
        lab[0, i * 2 : i * 2 + 2] = v
    return lab


def test_class_names_from_bundle_metadata():
    assert class_names_from_metadata(ROOT / "configs" / "metadata.json") == NAMES
    with pytest.raises(ValueError, match="channel_def"):
        class_names_from_metadata({"network_data_format": {"outputs": {}}})


def test_present_class_gives_its_binary_target():
    t = RandPromptd("label", NAMES, absent_prob=0.0)
    t.set_random_state(0)
    lab = _label((1, 2))
    for _ in range(20):
        out = t({"label": lab})
        c = out["prompt_class"]
        assert out["prompt"] == NAMES[c]
        assert out["target"].shape == (1, 8, 8, 8) and out["target"].dtype == torch.float32
        assert torch.equal(out["target"].bool(), lab == c)


def test_absent_classes_are_sampled_with_empty_targets():
    t = RandPromptd("label", NAMES, absent_prob=0.5)
    t.set_random_state(1)
    counts = Counter()
    for _ in range(200):
        out = t({"label": _label((1,))})
        counts[out["prompt_class"]] += 1
        if out["prompt_class"] == 2:
            assert not out["target"].any()
    assert 60 < counts[2] < 140 and counts[1] + counts[2] == 200
    # an empty map can only be prompted with absent classes
    out = t({"label": torch.zeros(1, 4, 4, 4)})
    assert not out["target"].any() and out["prompt_class"] in NAMES


def test_excluded_classes_of_a_folder_are_never_prompted_as_absent():
    names = {1: "anterior hippocampus", 2: "posterior hippocampus", 3: "grey matter", 4: "liver"}
    t = RandPromptd("label", names, absent_prob=1.0, absent_exclusions={"hippocampus": [3]})
    t.set_random_state(0)
    tagged = Counter(t({"label": _label((1,)), "dataset": "hippocampus"})["prompt_class"] for _ in range(200))
    assert 3 not in tagged and tagged[2] > 0 and tagged[4] > 0
    untagged = Counter(t({"label": _label((1,))})["prompt_class"] for _ in range(200))
    assert untagged[3] > 0  # another folder's items (or a single folder's) keep every class
    # an empty crop whose other classes are all excluded still gets a prompt (an absent one)
    only = RandPromptd("label", {1: "liver", 2: "grey matter"}, absent_exclusions={"abdomen": [2]})
    out = only({"label": torch.zeros(1, 4, 4, 4), "dataset": "abdomen"})
    assert not out["target"].any() and out["prompt_class"] in (1, 2)


def test_own_absent_prob_draws_absent_prompts_from_the_items_folder():
    names = {1: "liver", 2: "spleen", 3: "grey matter", 4: "white matter", 5: "left ventricle", 6: "myocardium"}
    folders = {"abdomen": [1, 2], "brain": [3, 4], "heart": [5, 6]}
    lab = _label((1,))  # a liver crop: spleen is the folder's only absent class

    def counts(own_absent_prob, folder="abdomen", n=1000):
        t = RandPromptd("label", names, absent_prob=1.0, folder_classes=folders, own_absent_prob=own_absent_prob)
        t.set_random_state(0)
        return Counter(t({"label": lab, "dataset": folder})["prompt_class"] for _ in range(n))

    uniform, own_half, own_all = counts(0.0), counts(0.5), counts(1.0)
    assert 150 < uniform[2] < 250  # one of five absent classes
    assert own_all == {2: 1000}
    assert 550 < own_half[2] < 650 and sum(own_half.values()) == 1000  # 0.5 + 0.5 / 5
    # a folder without an absent class of its own, or an untagged item, keeps the uniform choice
    both = _label((5, 6))
    t = RandPromptd("label", names, absent_prob=1.0, folder_classes=folders, own_absent_prob=1.0)
    t.set_random_state(0)
    assert set(Counter(t({"label": both, "dataset": "heart"})["prompt_class"] for _ in range(300))) == {1, 2, 3, 4}
    assert len(Counter(t({"label": lab})["prompt_class"] for _ in range(300))) == 5
    with pytest.raises(ValueError, match="own_absent_prob must be in"):
        RandPromptd("label", names, own_absent_prob=1.5)
    with pytest.raises(ValueError, match=r"folder_classes name class values \[9\]"):
        RandPromptd("label", names, folder_classes={"x": [9]})


def test_all_classes_refuses_folders_with_classes_they_may_hold_unlabelled():
    with pytest.raises(ValueError, match=r"images of \['hippocampus'\] may hold classes they do not label"):
        RandPromptd("label", NAMES, all_classes=True, absent_exclusions={"hippocampus": [3], "liver": []})
    RandPromptd("label", NAMES, all_classes=True, absent_exclusions={"liver": []})  # nothing excluded: fine


def test_all_classes_prompts_every_class_with_its_target():
    t = RandPromptd("label", NAMES, all_classes=True)
    lab = _label((2,))  # class 1 absent
    out = t({"label": lab})
    assert out["prompt"] == [NAMES[1], NAMES[2]]
    assert out["prompt_class"].tolist() == [1, 2]
    assert out["target"].shape == (2, 8, 8, 8) and out["target"].dtype == torch.float32
    assert not out["target"][0].any() and torch.equal(out["target"][1].bool(), lab[0] == 2)
    # without a channel axis too
    assert torch.equal(t({"label": lab[0]})["target"], out["target"])


def test_num_prompts_draws_distinct_classes_present_and_absent_with_their_targets():
    names = {1: "liver", 2: "spleen", 3: "grey matter", 4: "white matter", 5: "left ventricle", 6: "myocardium"}
    folders = {"abdomen": [1, 2], "brain": [3, 4], "heart": [5, 6]}
    lab = _label((1, 2))  # liver and spleen present
    t = RandPromptd("label", names, absent_prob=0.5, num_prompts=3, absent_exclusions={"abdomen": [6]})
    t.set_random_state(0)
    absent_counts = Counter()
    for _ in range(300):
        out = t({"label": lab, "dataset": "abdomen"})
        chosen = out["prompt_class"].tolist()
        assert len(set(chosen)) == 3 and 6 not in chosen  # distinct, never an excluded class as absent
        assert out["prompt"] == [names[c] for c in chosen]
        assert out["target"].shape == (3, 8, 8, 8)
        for target, c in zip(out["target"], chosen):
            assert torch.equal(target.bool(), lab[0] == c)
        absent_counts[sum(c not in (1, 2) for c in chosen)] += 1
    # each slot is absent with p 0.5 while both kinds are left: 1, 2 or 3 absent prompts, never 0 of 3 from 2 present
    assert set(absent_counts) == {1, 2, 3} and absent_counts[1] > absent_counts[3]
    # absent prompts favour the crop's own folder's missing classes
    own = RandPromptd("label", names, absent_prob=1.0, num_prompts=2, folder_classes=folders, own_absent_prob=1.0)
    own.set_random_state(0)
    firsts = Counter(own({"label": _label((5,)), "dataset": "heart"})["prompt_class"].tolist()[0] for _ in range(100))
    assert firsts == {6: 100}


def test_num_prompts_is_checked_and_names_the_file_without_enough_classes():
    with pytest.raises(ValueError, match=r"num_prompts must be in \[1, 2\]"):
        RandPromptd("label", NAMES, num_prompts=3)
    with pytest.raises(ValueError, match="set one of them"):
        RandPromptd("label", NAMES, num_prompts=2, all_classes=True)
    t = RandPromptd("label", {1: "liver", 2: "grey matter"}, num_prompts=2, absent_exclusions={"abdomen": [2]})
    label = MetaTensor(_label((1,)), meta={"filename_or_obj": "/data/liver_007.nii.gz"})
    with pytest.raises(ValueError, match=r"liver_007.nii.gz: 2 prompts asked, but only 1 classes can be prompted"):
        t({"label": label, "dataset": "abdomen"})


def test_sampling_is_reproducible_with_a_seed():
    a, b = RandPromptd("label", NAMES, absent_prob=0.3), RandPromptd("label", NAMES, absent_prob=0.3)
    a.set_random_state(5)
    b.set_random_state(5)
    lab = _label((1, 2))
    assert [a({"label": lab})["prompt"] for _ in range(10)] == [b({"label": lab})["prompt"] for _ in range(10)]


def test_labels_outside_channel_def_name_the_file():
    lab = MetaTensor(_label((1, 5)), meta={"filename_or_obj": "/data/labelsTr/case_007.nii.gz"})
    with pytest.raises(ValueError, match=r"case_007\.nii\.gz: label values \[5\]"):
        RandPromptd("label", NAMES)({"label": lab})
    with pytest.raises(ValueError, match="background"):
        RandPromptd("label", {0: "background"})


def test_embed_prompts_single_and_list():
    table = PromptEmbeddingTable({"anterior hippocampus": torch.ones(4), "posterior hippocampus": torch.zeros(4)})
    t = EmbedPromptd("prompt", table)
    assert torch.equal(t({"prompt": "Anterior Hippocampus"})["prompt_embedding"], torch.ones(4))
    out = t({"prompt": ["posterior hippocampus", "anterior hippocampus"]})["prompt_embedding"]
    assert out.shape == (2, 4) and torch.equal(out[0], torch.zeros(4))
    with pytest.raises(UnknownPromptError, match="Known prompts"):
        t({"prompt": "amygdala"})
