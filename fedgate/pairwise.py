"""Preference pairs on frozen features and cheap references: the Bradley-Terry linear head
and the baselines a pair-trained reward model has to beat.

A linear score ``s(x) = w . x`` under the Bradley-Terry model wins a pair with probability
``sigmoid(w . (x_chosen - x_rejected))``, so fitting ``w`` is logistic regression without
intercept on feature differences (each pair used in both orders, labels 1 and 0). The same
fit on frozen head inputs starts the head (``train.head-init=ridge`` on pair data) and is the
frozen-feature probe baseline; on TF-IDF vectors of the replies it is the bag-of-words
baseline; the reply-length rule picks, on the training pairs, whether the longer or the
shorter reply wins.
"""

from __future__ import annotations

import logging

import numpy as np

from fedgate.metrics import pairwise_accuracy
from fedgate.model import ALIGNMENT, NUM_OUTPUTS

log = logging.getLogger(__name__)
C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def differences(rows: np.ndarray) -> np.ndarray:
    """Per pair, chosen minus rejected, from rows that alternate chosen, rejected."""
    return rows[0::2] - rows[1::2]


def fit_bradley_terry(train_diff, val_diff, *, grid=C_GRID) -> tuple[np.ndarray, float, float]:
    """Linear Bradley-Terry weights from feature differences (dense or sparse rows); the
    inverse penalty C is chosen on the validation pairs' accuracy. Returns the weights, C and
    that validation accuracy."""
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression

    stack = sparse.vstack if sparse.issparse(train_diff) else np.vstack
    x = stack([train_diff, -train_diff])
    y = np.r_[np.ones(train_diff.shape[0]), np.zeros(train_diff.shape[0])]
    best = (None, float("nan"), -1.0)
    for c in grid:
        lr = LogisticRegression(C=c, fit_intercept=False, max_iter=2000).fit(x, y)
        w = lr.coef_.ravel()
        acc = pairwise_accuracy(np.asarray(val_diff @ w).ravel(), np.zeros(val_diff.shape[0]))
        if acc > best[2]:
            best = (w, c, acc)
    return best


def head_weights_from(w: np.ndarray) -> np.ndarray:
    """A (d+1, 6) head (last row the bias) whose alignment logit is ``w . x``; the attribute
    outputs, which pairs do not label, start at zero."""
    out = np.zeros((w.shape[0] + 1, NUM_OUTPUTS), dtype=np.float32)
    out[:-1, ALIGNMENT] = w
    return out


def length_rule(train_chosen: list[str], train_rejected: list[str]) -> int:
    """+1 when the longer reply wins more training pairs than the shorter, else -1."""
    diff = np.array([len(c) - len(r) for c, r in zip(train_chosen, train_rejected)])
    return 1 if (diff > 0).sum() >= (diff < 0).sum() else -1


def pair_baselines(train, validation, test, frozen: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """Test pairwise accuracy of the cheap references, each fitted on the training pairs
    (penalties chosen on the validation pairs): the reply-length rule (and which way it
    points), TF-IDF Bradley-Terry regression, and the probe on frozen head inputs."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    sign = length_rule(train["chosen"], train["rejected"])
    length = lambda ds: sign * np.array([len(c) - len(r) for c, r in zip(ds["chosen"], ds["rejected"])], float)
    out = {"length": pairwise_accuracy(length(test), np.zeros(len(test))),
           "length_longer_wins": float(sign > 0)}
    tfidf = TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=50000, sublinear_tf=True)
    tfidf.fit(list(train["chosen"]) + list(train["rejected"]))
    diff = {k: tfidf.transform(ds["chosen"]) - tfidf.transform(ds["rejected"])
            for k, ds in (("train", train), ("validation", validation), ("test", test))}
    w, _, _ = fit_bradley_terry(diff["train"], diff["validation"])
    out["tfidf_logreg"] = pairwise_accuracy(np.asarray(diff["test"] @ w).ravel(), np.zeros(len(test)))
    if frozen is not None:
        fd = {k: differences(v) for k, v in frozen.items()}
        w, _, _ = fit_bradley_terry(fd["train"], fd["validation"])
        out["frozen_probe"] = pairwise_accuracy(fd["test"] @ w, np.zeros(len(test)))
    return out
