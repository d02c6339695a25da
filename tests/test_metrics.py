"""Confusion matrix and scores in caffe-jacinto's convention (§g.4) and the nanmean convention."""

import numpy as np
import pytest

from caffelite.segmentation.metrics import (ConfusionAccumulator, LabelError, confusion_matrix, jacinto_scores,
                                    nanmean_scores)


def test_confusion_matrix_layout():
    gt = np.array([[0, 0, 1, 255], [2, 2, 1, 0]])
    pred = np.array([[0, 1, 1, 3], [7, 2, 1, 0]])
    cm = confusion_matrix(gt, pred, 3)
    want = np.zeros((3, 4), np.int64)
    want[0, 0] = 2
    want[0, 1] = 1
    want[1, 1] = 2
    want[2, 3] = 1  # prediction 7 is clipped into the extra column
    want[2, 2] = 1
    np.testing.assert_array_equal(cm, want)


def test_jacinto_convention_by_hand():
    m = np.array([[5, 1, 0, 2],   # the extra column (2) is dropped by jacinto
                  [1, 3, 0, 0],
                  [0, 0, 0, 0]])  # class 2 absent: not in the mean
    s = jacinto_scores(m)
    assert s["pixel_accuracy"] == pytest.approx(8 / 10)
    np.testing.assert_allclose(s["iou"], [5 / 7, 3 / 5, 0])
    assert s["mean_iou"] == pytest.approx((5 / 7 + 3 / 5) / 2)
    n = nanmean_scores(m)
    assert n["pixel_accuracy"] == pytest.approx(8 / 12)
    np.testing.assert_allclose(n["iou"][:2], [5 / 9, 3 / 5])
    assert np.isnan(n["iou"][2])
    assert n["mean_iou"] == pytest.approx((5 / 9 + 3 / 5) / 2)


def test_accumulator_matches_brute_force():
    rng = np.random.default_rng(0)
    acc = ConfusionAccumulator(5)
    brute = np.zeros((5, 6), np.int64)
    for _ in range(3):
        gt = rng.choice([0, 1, 2, 3, 4, 255], size=(20, 30))
        pred = rng.integers(0, 8, size=(20, 30))
        acc.update(gt, pred)
        for g, p in zip(gt.ravel(), pred.ravel(), strict=True):
            if g != 255:
                brute[g, min(p, 5)] += 1
    np.testing.assert_array_equal(acc.matrix, brute)
    s = acc.scores()
    assert 0 <= s["jacinto"]["mean_iou"] <= 1 and 0 <= s["nanmean"]["pixel_accuracy"] <= 1


def test_perfect_prediction():
    gt = np.array([0, 1, 2, 255])
    s = jacinto_scores(confusion_matrix(gt, np.array([0, 1, 2, 4]), 5))
    assert s["pixel_accuracy"] == 1 and s["mean_iou"] == 1


def test_label_outside_classes_is_an_error():
    with pytest.raises(LabelError, match="lab.png: label id 9"):
        confusion_matrix(np.array([9]), np.array([0]), 5, source="lab.png")
