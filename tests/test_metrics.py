"""Metrics against scikit-learn / numpy references, on random data with ties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from fedgate.metrics import (
    ATTRIBUTE_NAMES,
    alignment_metrics,
    best_threshold,
    f1_score,
    misaligned,
    pearson,
    roc_auc,
    roc_curve,
)


def _data(seed: int, n: int = 200, levels: int = 7):
    """Labels and scores with many ties (scores drawn from a few levels), loosely correlated."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.35
    score = rng.integers(0, levels, n) + y * rng.integers(0, 3, n)
    return y, score.astype(np.float64)


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_matches_sklearn(seed):
    y, s = _data(seed)
    assert len(np.unique(s)) < len(s) // 5  # plenty of ties
    assert roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    # continuous scores and integer labels too
    s2 = np.random.default_rng(seed + 100).normal(size=len(y)) + y
    assert roc_auc(y.astype(int), s2) == pytest.approx(skm.roc_auc_score(y, s2), abs=1e-12)


def test_roc_auc_hand_values_and_missing_class():
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert roc_auc(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.3, 0.4])) == 0.0
    assert roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5  # a tie counts half
    assert math.isnan(roc_auc(np.ones(4), np.arange(4.0)))
    assert math.isnan(roc_auc(np.zeros(4), np.arange(4.0)))


@pytest.mark.parametrize("seed", range(5))
def test_roc_curve_matches_sklearn(seed):
    y, s = _data(seed)
    fpr, tpr = roc_curve(y, s)
    ref_fpr, ref_tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr, ref_tpr, atol=1e-12)
    # the trapezoid area under our curve is the AUC
    assert np.trapezoid(tpr, fpr) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_f1_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.random(150) < 0.3
    p = rng.random(150) < 0.5
    assert f1_score(y, p) == pytest.approx(skm.f1_score(y, p), abs=1e-12)


def test_f1_edge_cases():
    assert f1_score(np.array([1, 0, 1]), np.array([1, 0, 1])) == 1.0
    assert f1_score(np.array([0, 0]), np.array([0, 0])) == 0.0  # nothing to find, nothing found
    assert f1_score(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0])) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(5))
def test_pearson_matches_numpy(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=80)
    b = 0.6 * a + rng.normal(size=80)
    assert pearson(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-12)
    assert math.isnan(pearson(np.ones(5), np.arange(5.0)))


@pytest.mark.parametrize("seed", range(5))
def test_best_threshold_maximises_f1(seed):
    y, s = _data(seed, n=120, levels=40)
    s = s + np.random.default_rng(seed).integers(0, 3, len(s)) * 0.5
    cut = best_threshold(y, s)
    brute = {c: skm.f1_score(y, s >= c) for c in np.unique(s)}
    best = max(brute.values())
    assert cut in brute
    assert skm.f1_score(y, s >= cut) == pytest.approx(best, abs=1e-12)


def test_best_threshold_many_candidates_is_close_to_optimal():
    rng = np.random.default_rng(7)
    y = rng.random(2000) < 0.3
    s = rng.normal(size=2000) + 1.5 * y
    cut = best_threshold(y, s)
    best = max(f1_score(y, s >= c) for c in np.unique(s))
    assert f1_score(y, s >= cut) >= best - 0.01


def _pred_labels(seed: int, n: int = 60):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, size=(n, 5))
    pred = labels + rng.normal(scale=1.0, size=(n, 5))
    return pred, labels


def test_alignment_metrics_values():
    pred, labels = _pred_labels(0)
    out = alignment_metrics(pred, labels)
    expected_keys = {"auc", "n", "misaligned_share", "f1_oracle", "mae"} | {f"pearson_{a}" for a in ATTRIBUTE_NAMES}
    assert set(out) == expected_keys
    y = labels[:, 0] <= 2
    assert out["n"] == 60
    assert out["misaligned_share"] == pytest.approx(y.mean())
    assert out["auc"] == pytest.approx(skm.roc_auc_score(y, -pred[:, 0]), abs=1e-12)
    assert out["auc"] > 0.7  # predictions track helpfulness, so misaligned rows score high
    for i, a in enumerate(ATTRIBUTE_NAMES):
        assert out[f"pearson_{a}"] == pytest.approx(np.corrcoef(pred[:, i], labels[:, i])[0, 1], abs=1e-12)
    assert out["mae"] == pytest.approx(np.abs(pred - labels).mean())
    best = max(skm.f1_score(y, -pred[:, 0] >= c) for c in np.unique(-pred[:, 0]))
    assert out["f1_oracle"] == pytest.approx(best, abs=1e-12)


def test_alignment_metrics_with_decision_threshold_and_custom_cut():
    pred, labels = _pred_labels(1)
    out = alignment_metrics(pred, labels, threshold=1, decision_threshold=-1.5)
    assert "f1" in out and "f1_oracle" not in out
    y = labels[:, 0] <= 1
    assert out["f1"] == pytest.approx(skm.f1_score(y, -pred[:, 0] >= -1.5), abs=1e-12)
    assert out["misaligned_share"] == pytest.approx(y.mean())


def test_alignment_metrics_nan_auc_when_one_class_absent():
    pred, labels = _pred_labels(2)
    labels[:, 0] = 4  # nobody is misaligned
    out = alignment_metrics(pred, labels)
    assert math.isnan(out["auc"])
    assert out["misaligned_share"] == 0.0
    labels[:, 0] = 0  # everybody is
    assert math.isnan(alignment_metrics(pred, labels)["auc"])


def test_misaligned_threshold():
    np.testing.assert_array_equal(misaligned(np.array([0, 1, 2, 3, 4])), [True, True, True, False, False])
    np.testing.assert_array_equal(misaligned(np.array([0, 1, 2, 3, 4]), 0), [True, False, False, False, False])


def test_pairwise_accuracy_counts_wins_by_hand_and_ties_as_half():
    from fedgate.metrics import pairwise_accuracy

    chosen = np.array([2.0, 1.0, 0.5, 3.0])
    rejected = np.array([1.0, 1.0, 0.7, -1.0])  # win, tie, loss, win
    assert pairwise_accuracy(chosen, rejected) == pytest.approx(2.5 / 4)
    assert pairwise_accuracy(np.zeros(10), np.zeros(10)) == 0.5  # a constant score is random
    with pytest.raises(ValueError, match="shapes"):
        pairwise_accuracy(np.zeros(3), np.zeros(4))


def test_pairwise_accuracy_ci_brackets_the_estimate_and_narrows_with_more_pairs():
    from fedgate.metrics import pairwise_accuracy_ci

    rng = np.random.default_rng(0)
    widths = []
    for n in (100, 1600):
        chosen = rng.normal(0.5, 1.0, n)
        rejected = rng.normal(0.0, 1.0, n)
        acc, low, high = pairwise_accuracy_ci(chosen, rejected)
        assert low <= acc <= high
        widths.append(high - low)
    # the binomial SE at p ~ 0.64 is 0.048 for 100 pairs: a 95% interval about 0.19 wide
    assert 0.12 < widths[0] < 0.26 and widths[1] < widths[0] / 3
