"""Metrics against hand-computed values, and the summary's conventions for empty classes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bundle.evaluation import case_metrics, format_table, summarize

CLASSES = {1: "a", 2: "b"}


def test_overlap_metrics_match_hand_computed_values():
    gt = np.zeros((10, 10, 10), int)
    pred = np.zeros_like(gt)
    gt[2:6, 2:6, 2:6] = 1  # 64 voxels
    pred[3:7, 2:6, 2:6] = 1  # 64 voxels, 48 shared
    m = case_metrics(pred, gt, CLASSES)["a"]
    assert m["dice"] == pytest.approx(2 * 48 / 128)
    assert m["iou"] == pytest.approx(48 / 80)
    assert m["precision"] == pytest.approx(48 / 64) and m["recall"] == pytest.approx(48 / 64)
    assert m["hd95"] == pytest.approx(1.0)  # surfaces one voxel apart along x
    spaced = case_metrics(pred, gt, CLASSES, spacing=(1, 1, 2.5))
    assert (
        spaced["a"]["volume_ml"] == pytest.approx(64 * 2.5 / 1000)
        and spaced["a"]["reference_ml"] == spaced["a"]["volume_ml"]
    )
    assert spaced["b"]["volume_ml"] == 0.0


def test_hd95_uses_the_spacing():
    gt = np.zeros((12, 12, 12), int)
    gt[4:8, 4:8, 4:8] = 1
    pred = np.roll(gt, 2, axis=0)
    assert case_metrics(pred, gt, {1: "a"}, spacing=(0.5, 1, 1))["a"]["hd95"] == pytest.approx(1.0)
    assert case_metrics(pred, gt, {1: "a"}, spacing=(2, 1, 1))["a"]["hd95"] == pytest.approx(4.0)


def test_surface_dice_counts_boundaries_within_one_mm():
    gt = np.zeros((12, 12, 12), int)
    gt[4:8, 4:8, 4:8] = 1
    pred = np.roll(gt, 1, axis=0)  # every boundary voxel one voxel from the other's boundary
    assert case_metrics(pred, gt, {1: "a"})["a"]["surface_dice"] == pytest.approx(1.0)
    assert case_metrics(gt, gt, {1: "a"})["a"]["surface_dice"] == pytest.approx(1.0)
    # at 2 mm along x the two faces across x are out of tolerance, the four side faces are not
    shifted = case_metrics(pred, gt, {1: "a"}, spacing=(2, 1, 1))["a"]["surface_dice"]
    assert 0.3 < shifted < 0.95
    far = np.roll(gt, 6, axis=0)  # disjoint, 6 voxels away
    assert case_metrics(far, gt, {1: "a"})["a"]["surface_dice"] == pytest.approx(0.0)


def test_empty_classes_follow_the_documented_conventions():
    gt = np.zeros((8, 8, 8), int)
    gt[2:4, 2:4, 2:4] = 1
    m = case_metrics(np.zeros_like(gt), gt, CLASSES)
    assert m["a"]["dice"] == 0.0 and math.isnan(m["a"]["hd95"])  # missed entirely
    assert m["a"]["surface_dice"] == 0.0
    assert m["b"] == {
        "dice": 1.0,
        "iou": 1.0,
        "hd95": 0.0,
        "surface_dice": 1.0,
        "precision": 1.0,
        "recall": 1.0,
        "volume_ml": 0.0,
        "reference_ml": 0.0,
    }
    summary = summarize([{"image": "x", **m}], ["a", "b"])
    assert summary["cases"][0]["a"]["hd95"] is None  # JSON-safe
    assert summary["classes"]["a"]["hd95"] is None and summary["mean"]["hd95"] == 0.0
    assert summary["mean"]["dice"] == pytest.approx(0.5)
    assert "mean" in format_table(summary)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        case_metrics(np.zeros((4, 4, 4), int), np.zeros((4, 4, 5), int), CLASSES)
