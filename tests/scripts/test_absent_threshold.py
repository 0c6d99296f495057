"""scripts/experiments/absent_threshold.py: the "absent" rule chosen from evaluations' answer volumes."""

from __future__ import annotations

import json

import pytest
import torch

from bundle.utils.config import BUNDLE_ROOT
from tests.helpers.scripts import load_script

SCRIPT = BUNDLE_ROOT / "scripts" / "experiments" / "absent_threshold.py"


def _evaluation(folder, absent_volumes, labelled):
    """An evaluation folder: absent answers (ml) per case, and one labelled class's (dice, volume, reference) per case."""
    folder.mkdir()
    cases = [{"image": f"c{i}", "volumes_ml": {"liver": v}} for i, v in enumerate(absent_volumes)]
    report = {"prompts": ["liver"], "thresholds_ml": [0.0, 0.5, 5.0], "cases": cases}
    (folder / "absent_prompts.json").write_text(json.dumps(report))
    metric_cases = [
        {"image": f"c{i}", "lv": {"dice": d, "volume_ml": v, "reference_ml": r}} for i, (d, v, r) in enumerate(labelled)
    ]
    (folder / "metrics.json").write_text(json.dumps({"classes": {"lv": {}}, "cases": metric_cases}))
    return folder


def test_rule_table_counts_empty_answers_and_the_dice_the_rule_costs(tmp_path):
    module = load_script(SCRIPT)
    a = _evaluation(tmp_path / "a", [0.0, 0.3, 2.0, 0.0], [(0.9, 10.0, 11.0), (0.0, 0.2, 0.0)])
    b = _evaluation(tmp_path / "b", [0.1, 0.0], [(0.8, 3.0, 2.0), (0.5, 0.4, 1.0)])
    evaluations = {f.name: module.read_evaluation(f) for f in (a, b)}
    rows = module.rule_table(evaluations, [0.0, 0.5, 5.0])
    strict, half, five = rows
    assert strict["empty"] == {"a": 0.5, "b": 0.5} and strict["empty_all"] == pytest.approx(3 / 6)
    assert strict["erased"] == 0 and strict["dice_change"] == {"a": 0.0, "b": 0.0}
    assert strict["false_positive_ml"] == pytest.approx((0.3 + 2.0 + 0.1) / 3)
    # at 0.5 ml: a's false positive of 0.2 ml on an empty reference becomes a perfect empty answer (+0.5 mean);
    # b's true answer of 0.4 ml is erased (its Dice 0.5 -> 0)
    assert half["empty_all"] == pytest.approx(5 / 6) and half["erased"] == 1
    assert half["dice"]["a"] == pytest.approx((0.9 + 1.0) / 2) and half["dice_change"]["b"] == pytest.approx(-0.25)
    assert five["empty_all"] == 1.0 and five["erased"] == 2  # b's 3 ml answer goes too
    # the Dice limit rules out 0.5 and 5: the strict rule stays, with the reason
    threshold, fraction, why = module.choose(rows, target=0.8, max_dice_loss=0.01)
    assert (threshold, fraction) == (0.0, 0.0) and "target not reached" in why
    threshold, fraction, why = module.choose(rows, target=0.8, max_dice_loss=0.3)
    assert (threshold, fraction) == (0.5, 0.0) and "least Dice cost" in why


def test_fraction_rules_scale_with_each_structures_training_volume(tmp_path):
    module = load_script(SCRIPT)
    # absent "liver" answers of 0, 0.3, 2 and 40 ml; the labelled "lv" answers are 10 ml (true) and 0.2 ml (false)
    a = _evaluation(tmp_path / "a", [0.0, 0.3, 2.0, 40.0], [(0.9, 10.0, 11.0), (0.0, 0.2, 0.0)])
    volumes = {"liver": 1000.0, "lv": 60.0}
    rows = module.rule_table({"a": module.read_evaluation(a)}, [0.0, 5.0], [0.05], volumes)
    assert [(r["threshold_ml"], r["fraction"]) for r in rows] == [(0.0, 0.0), (5.0, 0.0), (0.0, 0.05)]
    # 5 % of the liver's 1000 ml is 50 ml: every absent answer goes; lv's threshold is 3 ml, so its 10 ml answer
    # stays and its 0.2 ml false positive goes (Dice 0 -> 1 on that empty reference)
    fraction = rows[2]
    assert fraction["empty_all"] == 1.0 and fraction["erased"] == 0
    assert fraction["dice"]["a"] == pytest.approx((0.9 + 1.0) / 2)
    assert rows[1]["empty_all"] == 0.75  # 5 ml for everything leaves the 40 ml answer
    threshold, f, why = module.choose(rows, target=0.9, max_dice_loss=0.0)
    assert (threshold, f) == (0.0, 0.05)


def test_cli_prints_the_table_and_names_a_missing_report(tmp_path, capsys):
    module = load_script(SCRIPT)
    a = _evaluation(tmp_path / "a", [0.0, 0.3], [(0.9, 10.0, 11.0)])
    out = tmp_path / "rule.json"
    assert module.main([str(a), "--target", "0.9", "--output_file", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| T ml |" in printed and "min_answer_ml = 0.5, answer_volume_fraction = 0" in printed
    assert json.loads(out.read_text())["min_answer_ml"] == 0.5
    # a model file's training volumes add the fraction rules
    from bundle.text import PromptEmbeddingTable
    from bundle.utils.checkpoint import save_model

    table = PromptEmbeddingTable({"liver": torch.ones(3)}, {"model_name": "x"})
    model = save_model(torch.nn.Linear(1, 1), tmp_path / "model.pt", table, {"structure_volumes_ml": {"liver": 10.0}})
    assert module.main([str(a), "--target", "0.9", "--ckpt_path", str(model), "--fractions", "0.05"]) == 0
    printed = capsys.readouterr().out  # 5 % of 10 ml: the liver's 0.3 ml answer goes, as with 0.5 ml (listed first)
    assert "| 0 | 0.05 | 100.0 % |" in printed and "min_answer_ml = 0.5, answer_volume_fraction = 0:" in printed
    (tmp_path / "empty").mkdir()
    assert module.main([str(tmp_path / "empty")]) == 2
    assert "absent_prompts.json: not found" in capsys.readouterr().err
