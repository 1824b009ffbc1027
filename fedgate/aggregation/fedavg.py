"""Weighted federated averaging of deltas (McMahan et al., 2017), applied to the global state."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

Params = dict[str, np.ndarray]


def _check_same_layout(updates: Sequence[Mapping[str, np.ndarray]]) -> None:
    ref = updates[0]
    for i, u in enumerate(updates[1:], start=1):
        if set(u) != set(ref):
            diff = sorted(set(u) ^ set(ref))
            raise KeyError(f"update {i} and update 0 have different keys: {diff[:5]}")
        for k, v in u.items():
            if np.shape(v) != np.shape(ref[k]):
                raise ValueError(f"update {i}: key {k!r} has shape {np.shape(v)}, update 0 has {np.shape(ref[k])}")


def weighted_mean(updates: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]) -> Params:
    """``sum_k w_k u_k / sum_k w_k`` per key, computed in float64, returned in each key's dtype."""
    if not updates:
        raise ValueError("weighted_mean: no updates to average")
    if len(weights) != len(updates):
        raise ValueError(f"weighted_mean: {len(updates)} updates but {len(weights)} weights")
    w = np.asarray(weights, dtype=np.float64)
    if not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weighted_mean: weights must be finite, >= 0 and not all 0, got {w.tolist()}")
    _check_same_layout(updates)
    w = w / w.sum()
    out: Params = {}
    for k, ref in updates[0].items():
        acc = np.zeros(np.shape(ref), dtype=np.float64)
        for wk, u in zip(w, updates):
            acc += wk * np.asarray(u[k], dtype=np.float64)
        out[k] = acc.astype(np.asarray(ref).dtype)
    return out


def apply_update(params: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray], lr: float = 1.0) -> Params:
    """``params + lr * delta`` per key; keys and shapes must agree."""
    _check_same_layout([params, delta])
    return {k: (np.asarray(v, dtype=np.float64) + lr * np.asarray(delta[k], dtype=np.float64)).astype(np.asarray(v).dtype)
            for k, v in params.items()}


def fedavg(params: Mapping[str, np.ndarray], deltas: Sequence[Mapping[str, np.ndarray]],
           num_examples: Sequence[int], server_lr: float = 1.0) -> tuple[Params, Params]:
    """New global state and the example-weighted mean delta it applied.

    With ``server_lr = 1`` this is FedAvg: the global state becomes the example-weighted
    mean of the clients' local states."""
    mean_delta = weighted_mean(deltas, [float(n) for n in num_examples])
    return apply_update(params, mean_delta, server_lr), mean_delta
