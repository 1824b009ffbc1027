"""The reward head as a ridge regression on frozen features, from sufficient statistics.

Ridge regression needs only ``G = X1^T X1`` and ``M = X1^T Y`` (``X1`` = features with a
column of ones for the bias): sums over rows. So a federation gets the exact centralized
ridge head by adding up each client's ``(G_k, M_k)`` once before round 1, instead of
averaging heads each client fitted on its own few rows (which, at 200 rows and 1,500
features, are mostly noise: the averaged head ranked at chance). The regularisation
strength is chosen on rows the statistics never saw (the validation split). On preference
pairs the same statistics of each pair's feature difference, regressed on +1, give a
least-squares Bradley-Terry head (:func:`pair_ridge_stats`, :func:`fit_pairs`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from fedgate.metrics import misaligned, misalignment_score, pairwise_accuracy, roc_auc

log = logging.getLogger(__name__)
# Features have norm sqrt(d) per part (d = 384 for MiniLM), so useful penalties run high:
# on the embedded set's frozen features the best runs from 1e4 (all rows) to 1e5 (a few thousand).
LAMBDAS = (1.0, 10.0, 100.0, 1e3, 3e3, 1e4, 3e4, 1e5, 3e5, 1e6)


@dataclass
class RidgeStats:
    """Sufficient statistics of ``count`` rows: gram (d+1, d+1) and moment (d+1, k)."""

    gram: np.ndarray
    moment: np.ndarray
    count: int

    def __add__(self, other: "RidgeStats") -> "RidgeStats":
        if self.gram.shape != other.gram.shape or self.moment.shape != other.moment.shape:
            raise ValueError(f"ridge statistics of different shapes: gram {self.gram.shape} vs {other.gram.shape}, "
                             f"moment {self.moment.shape} vs {other.moment.shape}")
        return RidgeStats(self.gram + other.gram, self.moment + other.moment, self.count + other.count)


def with_bias(x: np.ndarray) -> np.ndarray:
    return np.c_[x, np.ones(len(x))].astype(np.float64)


def ridge_stats(x: np.ndarray, y: np.ndarray) -> RidgeStats:
    """Statistics of features ``x`` (n, d) and targets ``y`` (n, k)."""
    x1 = with_bias(x)
    return RidgeStats(x1.T @ x1, x1.T @ np.asarray(y, dtype=np.float64), len(x))


def sum_stats(parts: list[RidgeStats]) -> RidgeStats:
    if not parts:
        raise ValueError("no ridge statistics to add up")
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    return total


def solve(stats: RidgeStats, lam: float) -> np.ndarray:
    """Weights (d+1, k), the last row the bias; the bias is penalised like the rest (the
    features have unit scale, so this costs nothing measurable and keeps one formula)."""
    return np.linalg.solve(stats.gram + lam * np.eye(len(stats.gram)), stats.moment)


def fit(stats: RidgeStats, x_val: np.ndarray, y_val: np.ndarray, threshold: int,
        lambdas: tuple[float, ...] = LAMBDAS) -> tuple[np.ndarray, float, float]:
    """The weights whose lambda gives the best validation ROC-AUC of misaligned detection
    (labels: ``y_val[:, 0]``, the 0-4 helpfulness; score: the alignment output, or the
    helpfulness output for 5-column targets); returns (weights, lambda, validation AUC).
    A one-class validation split (AUC undefined) keeps the first lambda."""
    xv = with_bias(x_val)
    y = misaligned(np.asarray(y_val)[:, 0], threshold)
    best: tuple[float, float, np.ndarray | None] = (-1.0, lambdas[0], None)
    for lam in lambdas:
        w = solve(stats, lam)
        auc = roc_auc(y, misalignment_score(xv @ w))
        if best[2] is None or auc > best[0]:
            best = (auc, lam, w)
    auc, lam, w = best
    if w.shape[1] > 5:
        w = calibrate_alignment(w, xv, ~y)
    return w, lam, auc


def calibrate_alignment(w: np.ndarray, xv: np.ndarray, aligned: np.ndarray) -> np.ndarray:
    """Rescale the alignment column (6th) of ridge weights into a logit: a one-feature
    logistic regression of the aligned labels on the ridge score (Platt scaling) over the
    validation rows ``xv`` (with the bias column). A heavily penalised ridge score is tiny
    (all near 0), and the head's BCE term would start by tearing it apart; calibrated, the
    head starts as a sensible classifier and training refines it. Ranking is unchanged
    (``a > 0``); with one class in validation the weights are returned as they are."""
    from sklearn.linear_model import LogisticRegression

    if aligned.all() or not aligned.any():
        return w
    score = xv @ w[:, 5]
    scale = float(np.std(score)) or 1.0
    clf = LogisticRegression(C=1e4, max_iter=1000).fit((score / scale)[:, None], aligned)
    a, b = float(clf.coef_[0, 0]) / scale, float(clf.intercept_[0])
    if a <= 0:  # the score ranks backwards on validation: keep it uncalibrated rather than flip it
        return w
    out = w.copy()
    out[:, 5] = a * w[:, 5]
    out[-1, 5] += b
    return out


# ---------------------------------------------------------------------------- preference pairs
def pair_ridge_stats(rows: np.ndarray) -> RidgeStats:
    """Statistics of the linear Bradley-Terry head in least squares: features of rows that
    alternate chosen, rejected (n pairs = rows / 2); each pair's difference (its bias column
    0) is regressed on +1. The symmetric pair (rejected - chosen, -1) adds the same terms
    once more, so it is left out. Moment (d+1, 1)."""
    x1 = with_bias(rows)
    diff = x1[0::2] - x1[1::2]
    return RidgeStats(diff.T @ diff, diff.sum(axis=0)[:, None], len(diff))


def fit_pairs(stats: RidgeStats, x_val_rows: np.ndarray, num_outputs: int, alignment: int,
              lambdas: tuple[float, ...] = LAMBDAS) -> tuple[np.ndarray, float, float]:
    """Head weights (d+1, num_outputs) whose ``alignment`` column is the ridge Bradley-Terry
    score of pair statistics, the lambda chosen by pairwise accuracy on the validation pairs
    ``x_val_rows`` (alternating chosen, rejected), then scaled into a logit difference (a
    one-weight logistic regression of "chosen wins" on the score difference, both orders).
    The attribute columns, which pairs do not label, are 0. Returns (weights, lambda,
    validation pairwise accuracy)."""
    from sklearn.linear_model import LogisticRegression

    xv = with_bias(x_val_rows)
    dv = xv[0::2] - xv[1::2]
    best: tuple[float, float, np.ndarray | None] = (-1.0, lambdas[0], None)
    for lam in lambdas:
        w = solve(stats, lam)[:, 0]
        acc = pairwise_accuracy(dv @ w, np.zeros(len(dv)))
        if best[2] is None or acc > best[0]:
            best = (acc, lam, w)
    acc, lam, w = best
    margin = dv @ w
    scale = float(np.std(margin)) or 1.0
    if len(dv):
        clf = LogisticRegression(C=1e4, fit_intercept=False, max_iter=1000)
        clf.fit(np.r_[margin, -margin][:, None] / scale, np.r_[np.ones(len(dv)), np.zeros(len(dv))])
        a = float(clf.coef_[0, 0]) / scale
        if a > 0:  # a score that ranks backwards on validation is kept as it is, not flipped
            w = a * w
    out = np.zeros((len(w), num_outputs))
    out[:, alignment] = w
    return out, lam, acc
