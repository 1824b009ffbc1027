"""Robust aggregation of client deltas and checks on one update before it is aggregated.

Coordinate-wise median and trimmed mean after Yin et al. 2018 ("Byzantine-Robust Distributed
Learning"); Multi-Krum after Blanchard et al. 2017 (whole updates far from the crowd are left
out); norm clipping bounds how far a single client can move the global state.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from fedgate.aggregation.fedavg import Params, _check_same_layout


def update_norm(delta: Mapping[str, np.ndarray]) -> float:
    """Global L2 norm over all tensors of the update, in float64 (0.0 for an empty update)."""
    sq = sum(float(np.sum(np.square(np.asarray(v, dtype=np.float64)))) for v in delta.values())
    return math.sqrt(sq)


def clip_update(delta: Mapping[str, np.ndarray], max_norm: float) -> tuple[Params, float]:
    """``(delta * scale, scale)`` with ``scale = min(1, max_norm / norm)``, so the global norm is <= max_norm.

    The whole update is scaled by one factor, which keeps its direction."""
    if not (max_norm > 0 and math.isfinite(max_norm)):
        raise ValueError(f"clip_update: max_norm must be finite and > 0, got {max_norm}")
    norm = update_norm(delta)
    if not math.isfinite(norm):
        raise ValueError("clip_update: the update has a non-finite norm (NaN/Inf values)")
    scale = 1.0 if norm <= max_norm else max_norm / norm
    out = {k: (np.asarray(v, dtype=np.float64) * scale).astype(np.asarray(v).dtype) for k, v in delta.items()}
    return out, scale


def _stack(deltas: Sequence[Mapping[str, np.ndarray]], what: str) -> dict[str, np.ndarray]:
    if not deltas:
        raise ValueError(f"{what}: no updates to aggregate")
    _check_same_layout(deltas)
    return {k: np.stack([np.asarray(d[k], dtype=np.float64) for d in deltas]) for k in deltas[0]}


def coordinate_median(deltas: Sequence[Mapping[str, np.ndarray]]) -> Params:
    """Element-wise median over clients (unweighted; the mean of the two middle values for an even count)."""
    return {k: np.median(s, axis=0).astype(np.asarray(deltas[0][k]).dtype) for k, s in _stack(deltas, "coordinate_median").items()}


def trimmed_mean(deltas: Sequence[Mapping[str, np.ndarray]], trim_fraction: float) -> Params:
    """Per coordinate, drop the ``floor(trim_fraction * K)`` largest and smallest values and average the rest."""
    if not (0.0 <= trim_fraction < 0.5):
        raise ValueError(f"trimmed_mean: trim_fraction must be in [0, 0.5), got {trim_fraction}")
    stacks = _stack(deltas, "trimmed_mean")
    k = len(deltas)
    b = math.floor(trim_fraction * k + 1e-9)  # the epsilon keeps e.g. 0.29 * 100 = 28.999... at 29
    if 2 * b >= k:
        raise ValueError(f"trimmed_mean: trimming {b} per end needs at least {2 * b + 1} clients, got {k}")
    return {key: np.sort(s, axis=0)[b:k - b].mean(axis=0).astype(np.asarray(deltas[0][key]).dtype)
            for key, s in stacks.items()}


def krum_scores(deltas: Sequence[Mapping[str, np.ndarray]], byzantine: int) -> np.ndarray:
    """Krum's score per update (Blanchard et al. 2017): the sum of its squared L2 distances
    to its ``K - f - 2`` nearest other updates, ``f = byzantine``. Low = in a dense crowd."""
    stacks = _stack(deltas, "krum")
    k = len(deltas)
    nearest = k - byzantine - 2
    if byzantine < 0 or nearest < 1:
        raise ValueError(f"krum: {k} updates cannot outvote {byzantine} Byzantine ones (needs at least "
                         f"f + 3 = {byzantine + 3})")
    flat = np.concatenate([s.reshape(k, -1) for s in stacks.values()], axis=1)  # (clients, all coordinates)
    sq = np.sum(flat**2, axis=1)
    dist = np.maximum(sq[:, None] + sq[None, :] - 2.0 * flat @ flat.T, 0.0)
    np.fill_diagonal(dist, np.inf)
    return np.sort(dist, axis=1)[:, :nearest].sum(axis=1)


def multi_krum(deltas: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float], byzantine: int,
               keep: int = 0) -> tuple[Params, list[int]]:
    """Multi-Krum: the weighted mean of the ``keep`` updates with the lowest Krum scores
    (``keep = 0``: ``K - f``). Returns (mean, indices left out)."""
    scores = krum_scores(deltas, byzantine)
    keep = keep or len(deltas) - byzantine
    return _mean_of_chosen(deltas, weights, sorted(np.argsort(scores, kind="stable")[:keep].tolist()))


def best_scored(deltas: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float], scores: Sequence[float],
                drop: int) -> tuple[Params, list[int]]:
    """The weighted mean of the updates left after dropping the ``drop`` lowest ``scores``
    (at least one is kept; ties keep the earlier update). Returns (mean, indices dropped)."""
    if len(scores) != len(deltas):
        raise ValueError(f"best_scored: {len(scores)} scores for {len(deltas)} updates")
    keep = max(1, len(deltas) - max(0, drop))
    order = sorted(range(len(deltas)), key=lambda i: (-scores[i], i))
    return _mean_of_chosen(deltas, weights, sorted(order[:keep]))


def _mean_of_chosen(deltas: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float],
                    chosen: list[int]) -> tuple[Params, list[int]]:
    """(weighted mean of the ``chosen`` updates, indices of the others)."""
    stacks = _stack([deltas[i] for i in chosen], "robust selection")
    total = sum(weights[i] for i in chosen)
    w = np.asarray([weights[i] / total for i in chosen], dtype=np.float64)
    mean = {key: np.tensordot(w, s, axes=1).astype(np.asarray(deltas[0][key]).dtype) for key, s in stacks.items()}
    return mean, [i for i in range(len(deltas)) if i not in chosen]


def _listed(keys: list[str], at_most: int) -> str:
    more = f" (+{len(keys) - at_most} more)" if len(keys) > at_most else ""
    return f"{keys[:at_most]}{more}"


def validate_update(delta: Mapping[str, np.ndarray], expected: Mapping[str, tuple[tuple[int, ...], np.dtype]],
                    max_norm: float = 0.0) -> float:
    """The update's global norm, after checking keys, shapes, dtypes, finiteness and (if max_norm > 0) the norm.

    ``expected`` maps each key the client must send to its (shape, dtype); it may cover a subset of
    the state. Raises ValueError with a short reason a log line can carry, at the first failed check."""
    if not (max_norm >= 0 and math.isfinite(max_norm)):
        raise ValueError(f"validate_update: max_norm must be finite and >= 0, got {max_norm}")
    missing = sorted(set(expected) - set(delta))
    unexpected = sorted(set(delta) - set(expected))
    if missing or unexpected:
        parts = ([f"missing keys {_listed(missing, 5)}"] if missing else []) + \
                ([f"unexpected keys {_listed(unexpected, 5)}"] if unexpected else [])
        raise ValueError("; ".join(parts))
    arrays = {k: np.asarray(delta[k]) for k in expected}
    for k, (shape, _) in expected.items():
        if arrays[k].shape != tuple(shape):
            raise ValueError(f"key {k!r}: shape {arrays[k].shape} != expected {tuple(shape)}")
    for k, (_, dtype) in expected.items():
        if arrays[k].dtype != np.dtype(dtype):
            raise ValueError(f"key {k!r}: dtype {arrays[k].dtype} != expected {np.dtype(dtype)}")
    bad = [k for k, a in arrays.items() if not np.all(np.isfinite(a))]
    if bad:
        raise ValueError(f"non-finite values (NaN/Inf) in {len(bad)} key(s): {_listed(bad, 3)}")
    norm = update_norm(arrays)
    if max_norm > 0 and norm > max_norm:
        raise ValueError(f"update norm {norm:.6g} exceeds bound {max_norm:.6g}")
    return norm
