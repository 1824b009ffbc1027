"""Alignment metrics: detecting misaligned responses, attribute correlation, sizes.

"Misaligned" means true helpfulness <= threshold (default 2). The model's alignment score is
its alignment logit (predicted helpfulness for 5-output predictions), so the detection score
for "misaligned" is the negated score. For preference pairs the figure is pairwise accuracy:
the share of pairs whose chosen reply scores higher (ties count half; random = 0.5).
F1 needs a decision threshold: choose it on held-out training data (best_threshold), never
at a fixed cut, since regression to the middle makes a fixed cut call everything misaligned.
"""

from __future__ import annotations

import numpy as np

from fedgate.data.schema import ATTRIBUTES as ATTRIBUTE_NAMES
from fedgate.data.schema import binarize_misaligned as misaligned


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    i = 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U / (n_pos n_neg)); NaN if one class is absent."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(score, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = _ranks(s)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct threshold, from (0, 0)."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(score, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    last_of_tie = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = np.cumsum(y)[last_of_tie]
    fp = np.cumsum(~y)[last_of_tie]
    return np.r_[0.0, fp / max(fp[-1], 1)], np.r_[0.0, tp / max(tp[-1], 1)]


def f1_score(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y, p = np.asarray(y_true).astype(bool), np.asarray(y_pred).astype(bool)
    tp = int((y & p).sum())
    denom = 2 * tp + int((~y & p).sum()) + int((y & ~p).sum())
    return 2.0 * tp / denom if denom else 0.0


def best_threshold(y_true: np.ndarray, score: np.ndarray) -> float:
    """The cut on ``score`` (predict positive when score >= cut) that maximises F1."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(score, dtype=np.float64)
    candidates = np.unique(s)
    if len(candidates) > 512:
        candidates = np.quantile(s, np.linspace(0, 1, 513))
    f1s = [f1_score(y, s >= c) for c in candidates]
    return float(candidates[int(np.argmax(f1s))])


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def misalignment_score(pred: np.ndarray) -> np.ndarray:
    """Higher = more likely misaligned: minus the alignment logit (column 6 of a reward
    model's predictions), or minus predicted helpfulness where there is no such column."""
    pred = np.asarray(pred, dtype=np.float64)
    return -(pred[:, 5] if pred.shape[1] > 5 else pred[:, 0])


def alignment_metrics(pred: np.ndarray, labels: np.ndarray, *, threshold: int = 2,
                      decision_threshold: float | None = None) -> dict[str, float]:
    """All evaluation metrics for predictions (n, 5 or 6: attributes on the 0-4 scale, then
    the alignment logit) and 0-4 labels (n, 5).

    ``decision_threshold`` is a cut on :func:`misalignment_score`,
    chosen on held-out training data; without it F1 uses the cut that is best on these
    very rows (reported as ``f1_oracle``, an optimistic figure).
    """
    pred, labels = np.asarray(pred, dtype=np.float64), np.asarray(labels)
    y = misaligned(labels[:, 0], threshold)
    score = misalignment_score(pred)
    out = {"auc": roc_auc(y, score), "n": int(len(y)), "misaligned_share": float(y.mean()) if len(y) else 0.0}
    if decision_threshold is not None:
        out["f1"] = f1_score(y, score >= decision_threshold)
    else:
        out["f1_oracle"] = f1_score(y, score >= best_threshold(y, score))
    for i, name in enumerate(ATTRIBUTE_NAMES):
        out[f"pearson_{name}"] = pearson(pred[:, i], labels[:, i])
    out["mae"] = float(np.abs(pred[:, :5] - labels).mean())
    return out


def pairwise_accuracy(chosen: np.ndarray, rejected: np.ndarray) -> float:
    """Share of pairs whose chosen reply scores higher than the rejected one; a tie counts
    half, so a constant score gets 0.5."""
    chosen, rejected = np.asarray(chosen, dtype=np.float64), np.asarray(rejected, dtype=np.float64)
    if chosen.shape != rejected.shape or chosen.ndim != 1:
        raise ValueError(f"chosen and rejected scores must be two 1-d arrays of one length, got shapes "
                         f"{chosen.shape} and {rejected.shape}")
    if not len(chosen):
        return float("nan")
    return float(np.mean((chosen > rejected) + 0.5 * (chosen == rejected)))


def pairwise_accuracy_ci(chosen: np.ndarray, rejected: np.ndarray, *, level: float = 0.95, resamples: int = 2000,
                         seed: int = 0) -> tuple[float, float, float]:
    """Pairwise accuracy with a percentile bootstrap confidence interval over the pairs:
    ``(accuracy, low, high)``."""
    wins = (np.asarray(chosen, dtype=np.float64) > np.asarray(rejected, dtype=np.float64)) \
        + 0.5 * (np.asarray(chosen, dtype=np.float64) == np.asarray(rejected, dtype=np.float64))
    acc = pairwise_accuracy(chosen, rejected)
    if len(wins) < 2:
        return acc, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = wins[rng.integers(0, len(wins), (resamples, len(wins)))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    return acc, float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))
