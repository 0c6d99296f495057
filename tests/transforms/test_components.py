"""keep_largest per structure: which labels keep their largest connected component alone."""

from __future__ import annotations

import pytest
import torch
from monai.transforms import KeepLargestConnectedComponentd

from bundle.transforms import largest_component_labels

NAMES = ["Right Ventricle", "myocardium", "left ventricle"]


def test_a_switch_chooses_every_structure_or_none():
    assert largest_component_labels(NAMES, True) == [1, 2, 3]
    assert largest_component_labels(NAMES, False) == []


def test_names_choose_their_labels_and_skip_known_structures_not_prompted():
    assert largest_component_labels(NAMES, ["left  ventricle", "right ventricle"]) == [1, 3]
    # a choice made over a suite names structures of other data sets: known to the model, not asked for here
    assert largest_component_labels(NAMES, ["liver", "myocardium"], known=["liver", *NAMES]) == [2]
    assert largest_component_labels(NAMES, []) == []


def test_an_unknown_name_or_text_is_refused_with_what_to_write():
    with pytest.raises(ValueError, match=r"'livr', which this model does not segment \(its structures: left"):
        largest_component_labels(NAMES, ["livr"], known=["liver", *NAMES])
    for text in ("false", "liver"):  # the command line hands lowercase false over as text, which would read true
        with pytest.raises(ValueError, match=r"True, False or a list of structure names, got '"):
            largest_component_labels(NAMES, text)


def test_only_the_chosen_labels_lose_their_islands():
    label = torch.zeros(1, 12, 12, 12, dtype=torch.uint8)
    label[0, :4, :4, :4] = 1
    label[0, 10, 10, 10] = 1  # an island of label 1
    label[0, 6:9, :3, :3] = 2
    label[0, 0, 11, 11] = 2  # an island of label 2 (a structure in many pieces keeps it)
    applied = largest_component_labels(["liver", "cerebrospinal fluid"], ["liver"])
    out = KeepLargestConnectedComponentd("pred", applied_labels=applied, independent=True, connectivity=3)(
        {"pred": label.clone()}
    )["pred"]
    assert out[0, 10, 10, 10] == 0 and (out == 1).sum() == 64
    assert out[0, 0, 11, 11] == 2 and (out == 2).sum() == 28
