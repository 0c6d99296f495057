"""Prompts of absent structures: which prompts an evaluation asks every image for."""

from __future__ import annotations

import pytest

from bundle.evaluation import absent_prompt_names

MODEL = {1: "anterior hippocampus", 2: "posterior hippocampus", 3: "liver", 4: "left ventricle"}
LIVER_FOLDER = {1: "Liver", 2: "spleen"}


def test_others_are_the_models_classes_the_folder_does_not_label():
    assert absent_prompt_names("others", MODEL, LIVER_FOLDER) == [
        "anterior hippocampus",
        "posterior hippocampus",
        "left ventricle",
    ]
    assert absent_prompt_names(" Others ", MODEL, MODEL) == []


def test_other_regions_drop_structures_that_may_be_in_the_folders_images():
    model = {**MODEL, 5: "grey matter", 6: "widget"}
    assert absent_prompt_names("other_regions", model, LIVER_FOLDER) == [
        "anterior hippocampus",
        "posterior hippocampus",
        "left ventricle",
        "grey matter",
        "widget",
    ]
    # a hippocampus folder is not asked for grey matter (it is in the crop), but is for the other regions'
    hippocampus = {1: "anterior hippocampus", 2: "posterior hippocampus"}
    assert absent_prompt_names("other_regions", model, hippocampus) == ["liver", "left ventricle", "widget"]


def test_named_prompts_are_normalised_and_must_be_absent():
    assert absent_prompt_names(None, MODEL, LIVER_FOLDER) == [] and absent_prompt_names([], MODEL, LIVER_FOLDER) == []
    assert absent_prompt_names(["Left  Ventricle", "left ventricle", "edema"], MODEL, LIVER_FOLDER) == [
        "left ventricle",
        "edema",
    ]
    assert absent_prompt_names("edema, white matter", MODEL, LIVER_FOLDER) == ["edema", "white matter"]
    with pytest.raises(ValueError, match=r"\['liver'\] are classes of the evaluated data set"):
        absent_prompt_names(["edema", "LIVER"], MODEL, LIVER_FOLDER)
