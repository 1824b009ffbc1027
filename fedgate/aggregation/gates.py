"""The global gate profile: clients' per-adapter gate statistics, averaged.

The profile's mean token gate per adapter is the prior ``p_l`` of the gate KL term that the
clients are pulled towards in the next round (DESIGN.md section 2)."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from fedgate.federated.protocol import TOKEN_GATE

Profile = dict[str, dict[str, float]]
PRIOR_EPS = 1e-3  # keep the prior strictly inside (0, 1) so the KL stays finite


def gate_profile(stats: Sequence[Mapping[str, Mapping[str, float]]], weights: Sequence[float]) -> Profile:
    """Weighted mean of every statistic of every adapter over the clients that report it."""
    if len(stats) != len(weights):
        raise ValueError(f"gate_profile: {len(stats)} clients but {len(weights)} weights")
    sums: dict[str, dict[str, float]] = {}
    totals: dict[str, float] = {}
    for client, w in zip(stats, weights):
        if w < 0 or not np.isfinite(w):
            raise ValueError(f"gate_profile: weights must be finite and >= 0, got {w}")
        for module, values in client.items():
            acc = sums.setdefault(module, {})
            for key, v in values.items():
                if not np.isfinite(v):
                    raise ValueError(f"gate_profile: {module}.{key} is {v}")
                acc[key] = acc.get(key, 0.0) + w * float(v)
            totals[module] = totals.get(module, 0.0) + w
    return {m: {k: v / totals[m] for k, v in acc.items()} for m, acc in sums.items() if totals[m] > 0}


def prior_from_profile(profile: Mapping[str, Mapping[str, float]], key: str = TOKEN_GATE) -> dict[str, float]:
    """``{adapter: prior mean gate}`` from a profile, clipped into [eps, 1 - eps]."""
    return {m: float(np.clip(v[key], PRIOR_EPS, 1.0 - PRIOR_EPS)) for m, v in profile.items() if key in v}
