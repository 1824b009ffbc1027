"""Client-level differential privacy: the Gaussian mechanism of DP-FedAvg (McMahan et al.,
"Learning Differentially Private Recurrent Language Models", ICLR 2018) and its accounting.

``central``: the server clips every client's update (all shared tensors together, L2) to
``C`` (``federation.clip-norm``), averages them without weights, and adds Gaussian noise
of standard deviation ``sigma * C / n`` to the mean of ``n`` updates, i.e. ``sigma * C`` to
their sum, whose sensitivity to one client is ``C``. The privacy loss is accounted with
Google's ``dp-accounting`` (Renyi DP): each round a Poisson-sampled Gaussian mechanism of
noise multiplier ``sigma`` with sampling rate ``q = federation.fraction-train``, composed
over the rounds, under add-or-remove-one-client adjacency. Flower samples a fixed number of
clients without replacement; the Poisson analysis is the one DP-FedAvg uses, and with
``q = 1`` (every client every round) it is exact.

``local``: each client clips its own update to ``C`` and adds noise of standard deviation
``sigma * C`` before it sends anything, so the server (and the wire) never sees a clean
update. A client's release can change by ``2 C`` when its data is replaced, so each round it
takes part in is a Gaussian mechanism of noise multiplier ``sigma / 2``; the accountant
composes the rounds without amplification by sampling (the client knows it was sampled).

The noise comes from the operating system's entropy by default: seeded noise could be
regenerated and subtracted by anyone who knows the seed (for local DP, the server itself).
``federation.dp-seeded`` seeds it from ``train.seed``, the round and the client, for studies
that must rerun exactly; the guarantee then holds only against someone without the config.

Central DP divides the noised sum by the number of clients *sampled* that round, not by the
number whose update arrived, so the denominator does not depend on who took part; the
accountant composes each round with the sampling rate the server actually used (the sample
size over the connected clients: ``federation.min-train-nodes`` can raise it above
``federation.fraction-train``), and a target epsilon is solved with that rate.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from typing import Mapping, Sequence

import numpy as np

from fedgate.aggregation.robust import clip_update

MODES = ("off", "central", "local")


def _accounting():
    try:
        import dp_accounting
        from dp_accounting import rdp
    except ImportError as e:  # pragma: no cover - a declared dependency of the privacy extra
        raise ImportError("federation.dp needs dp-accounting: pip install 'fedgate[privacy]'") from e
    return dp_accounting, rdp


def epsilon(mode: str, noise_multiplier: float, sample_rate: float | Sequence[float], rounds: int,
            delta: float) -> float:
    """The privacy loss after ``rounds`` rounds at ``delta`` (RDP accountant); ``inf`` without
    noise, 0 after no round. ``sample_rate`` is one rate for every round, or one per round
    (central DP; local DP does not use it)."""
    if rounds <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    dp, rdp = _accounting()
    accountant = rdp.RdpAccountant()
    if mode == "local":  # replace-one sensitivity 2C, noise sigma * C
        accountant.compose(dp.SelfComposedDpEvent(dp.GaussianDpEvent(noise_multiplier / 2.0), rounds))
        return float(accountant.get_epsilon(delta))
    if mode != "central":
        raise ValueError(f"no privacy accounting for federation.dp={mode!r}")
    rates = [float(sample_rate)] * rounds if np.isscalar(sample_rate) else [float(q) for q in sample_rate]
    if len(rates) != rounds:
        raise ValueError(f"epsilon: {len(rates)} sampling rates for {rounds} rounds")
    for q, count in Counter(rates).items():
        step = dp.GaussianDpEvent(noise_multiplier)
        if q < 1.0:
            step = dp.PoissonSampledDpEvent(q, step)
        accountant.compose(dp.SelfComposedDpEvent(step, count))
    return float(accountant.get_epsilon(delta))


@functools.lru_cache(maxsize=64)  # a few seconds per solve; asked every round by server and clients
def noise_for_epsilon(mode: str, target: float, sample_rate: float, rounds: int, delta: float) -> float:
    """The smallest noise multiplier (to 0.1%) whose epsilon after ``rounds`` rounds is at
    most ``target``: bisection on :func:`epsilon`, which falls as the noise grows."""
    if target <= 0:
        raise ValueError(f"a target epsilon must be > 0, got {target}")
    low, high = 0.0, 1.0
    while epsilon(mode, high, sample_rate, rounds, delta) > target:
        low, high = high, 2 * high
        if high > 1e6:
            raise ValueError(f"no noise multiplier reaches epsilon {target} in {rounds} rounds at delta {delta}")
    while high - low > 1e-3 * high:
        mid = (low + high) / 2
        if epsilon(mode, mid, sample_rate, rounds, delta) > target:
            low = mid
        else:
            high = mid
    return high


def gaussian_noise(shapes: Mapping[str, tuple[int, ...]], std: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Independent N(0, std^2) noise for every coordinate of every named tensor."""
    return {k: rng.normal(0.0, std, size=shape) for k, shape in shapes.items()}


def noised_mean(clipped: list[Mapping[str, np.ndarray]], clip: float, noise_multiplier: float,
                rng: np.random.Generator, sampled: int | None = None) -> dict[str, np.ndarray]:
    """Central DP: the sum of updates already clipped to ``clip``, plus N(0, (noise_multiplier
    * clip)^2) per coordinate, divided by ``sampled`` (the clients sampled this round;
    default the number of updates): noise of std ``noise_multiplier * clip / sampled`` on the mean."""
    if not clipped:
        raise ValueError("noised_mean: no updates")
    n = max(sampled or 0, len(clipped))
    total = {k: np.sum([np.asarray(u[k], np.float64) for u in clipped], axis=0) for k in clipped[0]}
    noise = gaussian_noise({k: v.shape for k, v in total.items()}, noise_multiplier * clip, rng)
    return {k: (total[k] + noise[k]) / n for k in total}


def privatize_update(delta: Mapping[str, np.ndarray], clip: float, noise_multiplier: float,
                     rng: np.random.Generator) -> tuple[dict[str, np.ndarray], float]:
    """Local DP: clip one client's update to ``clip`` and add N(0, (noise_multiplier *
    clip)^2) per coordinate; returns the release and the clip scale applied."""
    clipped, scale = clip_update(delta, clip)
    noise = gaussian_noise({k: np.shape(v) for k, v in clipped.items()}, noise_multiplier * clip, rng)
    return {k: (np.asarray(v, np.float64) + noise[k]).astype(np.asarray(delta[k]).dtype)
            for k, v in clipped.items()}, scale


def noise_rng(seed: int | None, server_round: int, client: int = -1) -> np.random.Generator:
    """The generator for one round's noise, the server's (``client=-1``) or one client's:
    from the operating system's entropy when ``seed`` is None, else reproducible."""
    if seed is None:
        return np.random.default_rng()
    return np.random.default_rng([seed, server_round, client + 1, 0xD1FF])


def privacy_record(fed, noise_multiplier: float, rates: Sequence[float]) -> dict:
    """What ``rounds.jsonl`` records after a private round: the mechanism, sigma, the clip,
    this round's sampling rate and epsilon at ``federation.dp-delta`` over the rounds so far
    (``rates``: the sampling rate of each)."""
    return {"mode": fed.dp, "noise_multiplier": noise_multiplier, "clip_norm": fed.clip_norm, "delta": fed.dp_delta,
            "sample_rate": rates[-1] if fed.dp == "central" else 1.0,
            "epsilon": epsilon(fed.dp, noise_multiplier, rates, len(rates), fed.dp_delta)}
