"""Strategies as compositions of the pure rules: combine the client updates, then step the
global state with a server optimizer. The Flower strategy (server/strategy.py) only picks a
recipe by ``federation.strategy`` and calls :func:`aggregate`.

| strategy       | combine                        | server optimizer | client side              |
|----------------|--------------------------------|------------------|--------------------------|
| fedavg         | weighted mean of deltas        | sgd (lr 1)       |                          |
| fedavg-ab      | same math, named for LoRA: A and B averaged separately (the naive baseline)  | |
| fedavgm        | weighted mean                  | momentum         |                          |
| fedprox        | weighted mean                  | sgd              | proximal term            |
| fedadagrad/adam/yogi | weighted mean            | adaptive (lr 0.01) |                        |
| scaffold       | weighted mean                  | sgd              | control variates         |
| exact          | mean of products B_k A_k, SVD  | replaces factors |                          |
| ffa            | weighted mean (B only; A fixed)| sgd              | A frozen from the seed   |
| median         | coordinate-wise median         | sgd              |                          |
| trimmed-mean   | coordinate-wise trimmed mean   | sgd              |                          |
| krum           | Multi-Krum: mean of the K - f updates closest to the others | sgd |             |
| validated      | mean of the K - f updates whose global + delta scores best on the server's validation rows | sgd | |

``federation.weighting=uniform`` weighs every client alike (required by ``federation.dp``,
which clips, averages and adds noise: see privacy.py); ``federation.weighting=gates`` makes
the mean (and exact's product mean) weight each client per layer by examples x its mean gate
there; ``federation.clip-norm`` clips every update before combining, for any strategy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from fedgate.aggregation.fedavg import Params, weighted_mean
from fedgate.aggregation.lora import exact_aggregate, gate_weights, module_weighted_mean
from fedgate.aggregation.privacy import noised_mean
from fedgate.aggregation.robust import best_scored, clip_update, coordinate_median, multi_krum, trimmed_mean
from fedgate.aggregation.server_opt import ServerOptimizer, server_optimizer
from fedgate.aggregation.update import ClientUpdate


@dataclass(frozen=True)
class Recipe:
    combine: str  # mean | exact | median | trimmed-mean | krum | validated
    server_opt: str  # sgd | avgm | adagrad | adam | yogi
    default_lr: float = 1.0


RECIPES: dict[str, Recipe] = {
    "fedavg": Recipe("mean", "sgd"),
    "fedavg-ab": Recipe("mean", "sgd"),
    "fedavgm": Recipe("mean", "avgm"),
    "fedprox": Recipe("mean", "sgd"),
    "fedadagrad": Recipe("mean", "adagrad", 0.01),
    "fedadam": Recipe("mean", "adam", 0.01),
    "fedyogi": Recipe("mean", "yogi", 0.01),
    "scaffold": Recipe("mean", "sgd"),
    "exact": Recipe("exact", "sgd"),
    "ffa": Recipe("mean", "sgd"),
    "median": Recipe("median", "sgd"),
    "trimmed-mean": Recipe("trimmed-mean", "sgd"),
    "krum": Recipe("krum", "sgd"),
    "validated": Recipe("validated", "sgd"),
}


def make_server_optimizer(fed) -> ServerOptimizer:
    """The server optimizer of ``fed.strategy`` with the configured hyperparameters."""
    recipe = RECIPES[fed.strategy]
    lr = fed.server_lr or recipe.default_lr
    return server_optimizer(recipe.server_opt, lr, momentum=fed.server_momentum, beta1=fed.server_beta1,
                            beta2=fed.server_beta2, tau=fed.server_tau)


@dataclass
class Aggregated:
    params: Params
    opt_state: dict[str, np.ndarray]
    mean_delta: Params
    info: dict = field(default_factory=dict)  # clip scales, truncation errors, updates left out, scores


def aggregate(fed, params: Mapping[str, np.ndarray], updates: Sequence[ClientUpdate], optimizer: ServerOptimizer,
              opt_state: Mapping[str, np.ndarray], *, sent: Sequence[Mapping[str, np.ndarray]] | None = None,
              rank: int = 0, scores: Sequence[float] | None = None,
              noise: np.random.Generator | None = None, noise_multiplier: float = 0.0,
              sampled: int | None = None) -> Aggregated:
    """One round's new global state from validated client updates.

    Updates may cover a subset of ``params`` (tensors not sent stay as they are). ``sent[k]``
    is what client k started from (needed by ``exact``: its local factors are ``sent + delta``,
    possibly at its own rank); ``rank`` is the global adapter rank ``exact`` re-factorizes to;
    ``scores[k]`` is how well ``params + delta_k`` alone does on the server's validation rows
    (needed by ``validated``). Central DP (``federation.dp=central``,
    :mod:`fedgate.aggregation.privacy`): ``noise`` draws the Gaussian noise of multiplier
    ``noise_multiplier``, and the noised sum is divided by ``sampled``, the clients sampled
    this round. Under local DP the updates arrive clipped and noised: the server does not
    clip them again (a noised release is long by design).
    """
    if not updates:
        raise ValueError("aggregate: no updates")
    recipe = RECIPES[fed.strategy]
    deltas = [u.delta for u in updates]
    info: dict = {}
    if fed.clip_norm > 0 and fed.dp != "local":
        clipped = [clip_update(d, fed.clip_norm) for d in deltas]
        deltas = [d for d, _ in clipped]
        info["clip_scale"] = [s for _, s in clipped]
    examples = [1.0 if fed.weighting == "uniform" else float(u.num_examples) for u in updates]
    per_layer = (gate_weights([u.num_examples for u in updates], [u.gate_stats for u in updates])
                 if fed.weighting == "gates" else None)
    if recipe.combine == "exact":
        if sent is None or len(sent) != len(updates) or rank < 1:
            raise ValueError("aggregate: exact needs what each client was sent and the global rank")
        locals_ = [{k: np.asarray(s[k], np.float64) + d[k] for k in d} for s, d in zip(sent, deltas)]
        target, errors = exact_aggregate(locals_, per_layer or examples, rank)
        info["truncation_error"] = errors
        new = {**params, **{k: v.astype(np.asarray(params[k]).dtype) for k, v in target.items()}}
        mean_delta = {k: new[k] - np.asarray(params[k]) for k in target}
        return Aggregated(new, dict(opt_state), mean_delta, info)
    if recipe.combine == "median":
        mean_delta = coordinate_median(deltas)
    elif recipe.combine == "trimmed-mean":
        mean_delta = trimmed_mean(deltas, fed.trim_fraction)
    elif recipe.combine == "krum":
        if len(deltas) >= fed.byzantine_clients + 3:
            mean_delta, info["excluded"] = multi_krum(deltas, examples, fed.byzantine_clients)
        else:  # too few updates this round for Krum's vote: the median is robust without one
            mean_delta, info["krum_fallback"] = coordinate_median(deltas), "median"
    elif recipe.combine == "validated":
        if scores is None:
            raise ValueError("aggregate: strategy validated needs the server's validation score of each update")
        mean_delta, info["excluded"] = best_scored(deltas, examples, scores, fed.byzantine_clients)
        info["validation_auc"] = [float(s) for s in scores]
    elif fed.dp == "central":  # config allows only sum rules here: clipped updates, unweighted, noised
        if noise is None or not noise_multiplier > 0:
            raise ValueError("aggregate: federation.dp=central needs a noise generator and a noise multiplier")
        mean_delta = noised_mean(deltas, fed.clip_norm, noise_multiplier, noise, sampled)
        info["dp_noise_std"] = noise_multiplier * fed.clip_norm / max(sampled or 0, len(deltas))
    elif per_layer is not None:
        mean_delta = module_weighted_mean(deltas, per_layer)
    else:
        mean_delta = weighted_mean(deltas, examples)
    new, state = optimizer.step(opt_state, params, mean_delta)
    return Aggregated(new, state, mean_delta, info)


def scaffold_control(c: Mapping[str, np.ndarray], control_deltas: Sequence[Mapping[str, np.ndarray]],
                     num_clients: int) -> Params:
    """SCAFFOLD's server control variate: ``c + (|S| / N) mean_k(c_k+ - c_k)``, S the clients
    of this round, N all clients."""
    if not control_deltas:
        return dict(c)
    mean = weighted_mean(control_deltas, [1.0] * len(control_deltas))
    share = len(control_deltas) / max(num_clients, len(control_deltas))
    return {k: (np.asarray(v, np.float64) + share * mean[k]).astype(np.asarray(v).dtype) if k in mean else v
            for k, v in c.items()}
