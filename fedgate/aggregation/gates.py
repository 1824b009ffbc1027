"""The global gate profile: clients' per-adapter gate statistics, averaged.

The profile's mean token gate per adapter is the prior ``p_l`` of the gate KL term that the
clients are pulled towards in the next round (fedgate/losses.py)."""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

TOKEN_GATE = "token_gate"  # keys of one adapter's gate statistics (fedgate.train.GateTracker)
STRUCTURAL_GATE = "structural_gate"


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


def below_threshold_streaks(streaks: Mapping[str, int], profile: Mapping[str, Mapping[str, float]],
                            threshold: float, key: str = STRUCTURAL_GATE) -> dict[str, int]:
    """Consecutive rounds each adapter's global structural gate has stayed below ``threshold``
    (reset to 0 by a round at or above it); adapters absent from the profile keep their count."""
    out = dict(streaks)
    for module, values in profile.items():
        if key in values:
            out[module] = out.get(module, 0) + 1 if values[key] < threshold else 0
    return out


def newly_pruned(streaks: Mapping[str, int], patience: int, pruned: Iterable[str], *,
                 limit: int | None = None, gates: Mapping[str, float] | None = None) -> list[str]:
    """Adapters whose streak reached ``patience`` rounds and that are not pruned yet, sorted.
    With ``limit``, at most that many: those with the lowest ``gates`` value first (ties by name)."""
    done = set(pruned)
    due = [m for m, n in streaks.items() if n >= patience and m not in done]
    if limit is not None:
        due = sorted(due, key=lambda m: ((gates or {}).get(m, 0.0), m))[:max(0, limit)]
    return sorted(due)
