"""scripts/experiments/largest_component.py: saved predictions rescored with and without keep_largest."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from bundle.utils.config import BUNDLE_ROOT
from tests.helpers.scripts import load_script

SCRIPT = BUNDLE_ROOT / "scripts" / "experiments" / "largest_component.py"


def _evaluation(tmp_path, msd_dir, island: bool):
    """An evaluate.json-like folder: every case's reference, plus a false island of label 1 when asked."""
    out = tmp_path / ("island" if island else "clean")
    (out / "predictions").mkdir(parents=True)
    cases = []
    for label_file in sorted((msd_dir / "labelsTr").glob("*.nii.gz")):
        ref = nib.load(str(label_file))
        pred = np.asarray(ref.dataobj).astype(np.uint8)
        if island:
            pred[:3, :3, :3] = 1  # a corner far from the phantom's structures
        nib.save(
            nib.Nifti1Image(pred, ref.affine), str(out / "predictions" / label_file.name.replace(".nii", "_seg.nii"))
        )
        cases.append({"image": str(msd_dir / "imagesTr" / label_file.name)})
    (out / "metrics.json").write_text(json.dumps({"cases": cases}))
    return out


def test_islands_are_removed_and_the_rule_is_chosen_only_where_it_helps(tmp_path, msd_dir, capsys):
    module = load_script(SCRIPT)
    island, clean = _evaluation(tmp_path, msd_dir, True), _evaluation(tmp_path, msd_dir, False)
    before = (island / "predictions" / "case_0_seg.nii.gz").read_bytes()
    result = module.rescore(island, msd_dir)
    plain, kept = result["classes"]["anterior hippocampus"]
    assert plain < 1.0 and kept == pytest.approx(1.0) and result["cases"] == 6
    assert result["classes"]["posterior hippocampus"] == [pytest.approx(1.0)] * 2
    assert (island / "predictions" / "case_0_seg.nii.gz").read_bytes() == before  # saved predictions untouched
    # per structure: the island's structure gains, the other is not changed and is not chosen
    assert module.choose({"island": result}) == ["anterior hippocampus"]
    assert module.choose({"clean": module.rescore(clean, msd_dir)}) == []
    assert module.choose_data_sets({"island": result, "clean": module.rescore(clean, msd_dir)}) == {
        "island": True,
        "clean": False,
    }
    report = tmp_path / "choice.json"
    argv = ["--evaluation", str(island), str(msd_dir), "--output_file", str(report)]
    assert module.main(argv) == 0
    written = json.loads(report.read_text())
    assert written["keep_largest"] == ["anterior hippocampus"]
    assert written["keep_largest_by_data_set"] == {msd_dir.name: True}
    printed = capsys.readouterr().out
    assert f"keep_largest per data set: {msd_dir.name} True" in printed
    assert "| Task | **mean** | 6 |" in printed and '''--keep_largest "['anterior hippocampus']"''' in printed


def test_a_structure_of_several_data_sets_is_chosen_on_all_their_cases():
    module = load_script(SCRIPT)
    acdc = {"cases": 10, "classes": {"left ventricle": [0.80, 0.82], "myocardium": [0.7, 0.7]}}
    mscmr = {"cases": 5, "classes": {"left ventricle": [0.90, 0.85], "liver": [0.5, 0.6]}}
    # left ventricle: 10 x +0.02 against 5 x -0.05, a loss over the 15 cases
    assert module.choose({"acdc": acdc, "mscmr": mscmr}) == ["liver"]


def test_a_missing_prediction_is_named(tmp_path, msd_dir):
    module = load_script(SCRIPT)
    evaluation = _evaluation(tmp_path, msd_dir, False)
    (evaluation / "predictions" / "case_2_seg.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"case_2_seg\.nii\.gz: the saved prediction of .*case_2\.nii\.gz"):
        module.rescore(evaluation, msd_dir)
    with pytest.raises(FileNotFoundError, match="no metrics.json"):
        module.rescore(tmp_path, msd_dir)
