"""FLoRA (Wang et al., "FLoRA: Federated Fine-Tuning Large Language Models with Heterogeneous
Low-Rank Adaptations", NeurIPS 2024): stacking the clients' factors, ``[B_1 ... B_K]`` times
``[p_1 A_1; ... ; p_K A_K]``, gives exactly ``sum_k p_k B_k A_k`` whatever each client's rank (the ungated update: with gates
that differ between clients, the gates multiply the merged term as well);
clients merge that update into their copy of the frozen weights and start the next round
from fresh adapters (A random, B zero).

Where fedgate departs from the paper: the server does the merging. It adds the weighted sum
of the clients' products (in the global LoRA scaling) to each adapter's dense frozen term
(``adapter.dense-residual``), and sends that term whole with fresh factors, A drawn from
``train.seed`` and the round, B zero. A client that missed rounds (sampling) therefore still
starts from the global model, but the downlink is one dense ``(d_out, d_in)`` matrix per
adapted layer instead of the stacked factors. The round record gives both: the bytes sent, and
``stacked_bytes``, what the paper's stacked factors of that round would have been per client.
"""

from __future__ import annotations

import zlib
from typing import Mapping, Sequence

import numpy as np

from fedgate.aggregation.lora import LORA_A, LORA_B, RESIDUAL, lora_modules
from fedgate.aggregation.server_opt import ServerOptimizer
from fedgate.aggregation.update import ClientUpdate
from fedgate.strategies.base import Aggregated, RoundInputs, Strategy
from fedgate.strategies.fedex import mean_product, plain_average


def fresh_a(module: str, shape: tuple[int, int], seed: int, server_round: int) -> np.ndarray:
    """A new ``A`` for ``module`` after ``server_round``: uniform in +-1/sqrt(d_in) (nn.Linear's
    init bound), from a generator seeded by (seed, round, module name)."""
    gen = np.random.default_rng([int(seed), int(server_round), zlib.crc32(module.encode())])
    bound = 1.0 / np.sqrt(shape[1])
    return gen.uniform(-bound, bound, size=shape)


class FLoRA(Strategy):
    name = "flora"
    summary = ("the clients' products stacked (exact, any ranks) and merged into a dense frozen term "
               "(`adapter.dense-residual`); adapters restart each round")
    lora_only = True
    admits_larger_ranks = False  # padded to the global rank: a larger node's extra components would never move
    paper = "FLoRA: Wang et al., NeurIPS 2024"
    travels_up = "every trainable tensor, at the client's rank"
    travels_down = "fresh factors, gates, head, and a dense d_out x d_in matrix per adapted layer"
    dense_residual = True
    per_layer_weights = False
    sums_updates = False  # clipped factors multiply: one client's product is not bounded by the clip
    sets_factors = True  # merges the exact sum and restarts the factors

    def aggregate(self, params: Mapping[str, np.ndarray], updates: Sequence[ClientUpdate],
                  optimizer: ServerOptimizer, opt_state: Mapping[str, np.ndarray],
                  inputs: RoundInputs | None = None) -> Aggregated:
        inputs = inputs or RoundInputs()
        stacked = 4 * sum(v.size for u in updates for k, v in u.delta.items() if k.endswith((LORA_A, LORA_B)))
        # gates and head: the plain average; the factors are replaced below
        new, state, locals_, examples, info = plain_average(self, params, updates, optimizer, opt_state, inputs)
        for m in lora_modules(locals_[0]):
            key = m + RESIDUAL
            if key not in params:
                raise KeyError(f"aggregate: flora needs {key} in the global state (adapter.dense-residual)")
            merged = inputs.scaling * mean_product(locals_, examples, m)
            new[key] = (np.asarray(params[key], np.float64) + merged).astype(np.asarray(params[key]).dtype)
            a, b = np.asarray(params[m + LORA_A]), np.asarray(params[m + LORA_B])
            new[m + LORA_A] = fresh_a(m, a.shape, inputs.seed, inputs.server_round).astype(a.dtype)
            new[m + LORA_B] = np.zeros_like(b)
        info["stacked_bytes"] = stacked  # the paper's downlink of this round, per client
        mean_delta = {k: new[k] - np.asarray(params[k]) for k in new}
        return Aggregated(new, state, mean_delta, info)
