"""Ridge head from sufficient statistics: summed client statistics give the pooled fit,
and the solution matches scikit-learn's Ridge (bias penalised alike via an explicit column)."""

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from fedgate import ridge


def _data(n=60, d=7, k=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = x @ rng.normal(size=(d, k)) + 0.1 * rng.normal(size=(n, k))
    return x, y


def test_solve_matches_sklearn_ridge_with_a_bias_column():
    x, y = _data()
    w = ridge.solve(ridge.ridge_stats(x, y), lam=3.0)
    ref = Ridge(alpha=3.0, fit_intercept=False).fit(np.c_[x, np.ones(len(x))], y)
    np.testing.assert_allclose(w, ref.coef_.T, rtol=1e-8, atol=1e-10)


def test_summed_client_statistics_equal_the_pooled_rows():
    x, y = _data(n=90)
    parts = [ridge.ridge_stats(x[i:i + 30], y[i:i + 30]) for i in (0, 30, 60)]
    total, pooled = ridge.sum_stats(parts), ridge.ridge_stats(x, y)
    assert total.count == 90
    np.testing.assert_allclose(total.gram, pooled.gram, rtol=1e-12)
    np.testing.assert_allclose(ridge.solve(total, 10.0), ridge.solve(pooled, 10.0), rtol=1e-10)


def test_hand_worked_one_feature():
    # x = [1, 2], y = [2, 4] with bias column: G = [[5, 3], [3, 2]], M = [10, 6]
    stats = ridge.ridge_stats(np.array([[1.0], [2.0]]), np.array([[2.0], [4.0]]))
    np.testing.assert_allclose(stats.gram, [[5, 3], [3, 2]])
    np.testing.assert_allclose(stats.moment, [[10], [6]])
    # lambda 1: [[6, 3], [3, 3]] w = [10, 6] -> w = [4/3, 2/3]
    np.testing.assert_allclose(ridge.solve(stats, 1.0)[:, 0], [4 / 3, 2 / 3])


def test_fit_chooses_lambda_on_validation_auc_and_refuses_mismatched_shapes():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 5))
    helpfulness = np.clip(np.round(2 + 1.5 * x[:, 0] + 0.3 * rng.normal(size=200)), 0, 4)
    y = np.repeat(((helpfulness - 2) / 2)[:, None], 5, axis=1)
    stats = ridge.ridge_stats(x[:150], y[:150])
    w, lam, auc = ridge.fit(stats, x[150:], np.repeat(helpfulness[150:, None], 5, axis=1), threshold=2)
    assert lam in ridge.LAMBDAS and auc > 0.9 and w.shape == (6, 5)
    with pytest.raises(ValueError, match="different shapes"):
        stats + ridge.ridge_stats(x[:, :3], y)


def test_the_alignment_column_is_calibrated_into_a_logit_without_changing_its_ranking():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(400, 4))
    helpfulness = np.clip(np.round(2.5 + 1.2 * x[:, 0] + 0.5 * rng.normal(size=400)), 0, 4)
    y = np.zeros((400, 5))
    y[:, 0] = helpfulness
    aligned = np.where(helpfulness > 2, 1.0, -1.0)
    stats = ridge.ridge_stats(x[:300], np.c_[(y[:300] - 2) / 2, aligned[:300]])
    raw = ridge.solve(stats, 1e4)  # heavy penalty: a tiny score
    w, lam, _ = ridge.fit(stats, x[300:], y[300:], threshold=2, lambdas=(1e4,))
    xv = ridge.with_bias(x[300:])
    s_raw, s_cal = xv @ raw[:, 5], xv @ w[:, 5]
    assert np.abs(s_raw).max() < 0.2 < np.abs(s_cal).max()  # now on a logit scale
    assert np.corrcoef(s_raw, s_cal)[0, 1] > 0.999  # an increasing affine map: same ranking
    np.testing.assert_allclose(w[:, :5], raw[:, :5])  # the attributes are untouched
    # the calibrated logit fits the validation labels better than the raw score does
    p = 1 / (1 + np.exp(-s_cal))
    assert -np.mean(np.where(aligned[300:] > 0, np.log(p), np.log(1 - p))) < np.log(2)


def test_pair_statistics_are_the_least_squares_bradley_terry_fit():
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(40, 3))  # 20 pairs: rows 0, 2, 4 ... chosen; 1, 3, 5 ... rejected
    stats = ridge.pair_ridge_stats(rows)
    assert stats.count == 20 and stats.moment.shape == (4, 1)
    halves = ridge.pair_ridge_stats(rows[:20]) + ridge.pair_ridge_stats(rows[20:])  # two clients
    np.testing.assert_allclose(halves.gram, stats.gram)
    np.testing.assert_allclose(halves.moment, stats.moment)
    diff = rows[0::2] - rows[1::2]
    lam = 2.0
    expected = np.linalg.solve(diff.T @ diff + lam * np.eye(3), diff.sum(axis=0))  # regress differences on +1
    w = ridge.solve(stats, lam)[:, 0]
    np.testing.assert_allclose(w[:3], expected)
    assert w[3] == pytest.approx(0.0, abs=1e-12)  # the bias column of a difference is 0


def test_fit_pairs_ranks_held_out_pairs_by_the_hidden_preference_and_scales_it_into_a_logit():
    rng = np.random.default_rng(1)
    true_w = np.array([2.0, -1.0, 0.0])

    def pairs(n):
        a, b = rng.normal(size=(n, 3)), rng.normal(size=(n, 3))
        better = (a @ true_w > b @ true_w)[:, None]
        return np.stack([np.where(better, a, b), np.where(better, b, a)], axis=1).reshape(2 * n, 3)

    head, lam, acc = ridge.fit_pairs(ridge.pair_ridge_stats(pairs(400)), pairs(200), num_outputs=6, alignment=5)
    assert head.shape == (4, 6) and lam in ridge.LAMBDAS
    assert acc > 0.95 and np.all(head[:, :5] == 0) and head[3, 5] == 0.0  # attributes unlabelled; no bias
    cosine = head[:3, 5] @ true_w / np.linalg.norm(head[:3, 5]) / np.linalg.norm(true_w)
    assert cosine > 0.99
    # calibrated: separable pairs get confident logit differences, not ridge-sized ones near 0
    test = pairs(200)
    margins = (test[0::2] - test[1::2]) @ head[:3, 5]
    assert np.median(margins) > 2.0
