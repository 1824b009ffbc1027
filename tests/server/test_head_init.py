"""Screening the federated ridge head under ``validated``: which clients' statistics are
left out (hand-worked), and on synthetic rows the flipped client is the one whose own head
ranks the validation rows below chance while the honest clients' heads rank them well."""

import numpy as np
import torch

from fedgate import ridge
from fedgate.model import head_targets
from server.head_init import screened

THRESHOLD = 2


def test_only_scores_below_chance_are_left_out_lowest_first_within_the_budget():
    assert screened([0.70, 0.31, 0.65, 0.45], budget=1) == [1]
    assert screened([0.70, 0.31, 0.65, 0.45], budget=2) == [1, 3]
    assert screened([0.70, 0.31, 0.65, 0.45], budget=0) == []
    assert screened([0.70, 0.62, 0.50], budget=2) == []  # exactly chance is kept
    assert screened([0.2, 0.1, 0.3], budget=5) == [0, 1, 2]


def _labels(x: np.ndarray, w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """0-4 attributes driven by a linear score of the features, plus noise."""
    score = x @ w + 0.5 * rng.normal(size=len(x))
    cols = [np.clip(np.round(2 + score + 0.3 * rng.normal(size=len(x))), 0, 4) for _ in range(5)]
    return np.stack(cols, axis=1).astype(np.int64)


def test_the_flipped_clients_own_head_scores_below_chance_and_is_the_one_screened():
    rng = np.random.default_rng(0)
    d, w = 12, rng.normal(size=12) / np.sqrt(12)
    clients = []
    for i in range(5):
        x = rng.normal(size=(80, d))
        y = _labels(x, w, rng)
        if i == 3:  # conflicting feedback: every attribute v -> 4 - v
            y = 4 - y
        clients.append(ridge.ridge_stats(x, head_targets(torch.from_numpy(y), THRESHOLD).numpy()))
    x_val = rng.normal(size=(200, d))
    y_val = _labels(x_val, w, rng)
    scores = [ridge.fit(part, x_val, y_val, THRESHOLD)[2] for part in clients]
    assert scores[3] < 0.3 and min(s for i, s in enumerate(scores) if i != 3) > 0.7
    assert screened(scores, budget=1) == [3]
    kept = ridge.sum_stats([p for i, p in enumerate(clients) if i != 3])
    everyone = ridge.sum_stats(clients)
    assert ridge.fit(kept, x_val, y_val, THRESHOLD)[2] > ridge.fit(everyone, x_val, y_val, THRESHOLD)[2]
