"""``exact``: average the clients' LoRA products ``B_k A_k`` (not the factors) and
re-factorize the mean to the global rank by truncated SVD, after FlexLoRA (Bai et al.,
2024). The mean product is what FedAvg of the full weight updates would give; what the
truncation loses is logged per adapter (``truncation_error``, relative Frobenius norm).
Clients of another rank start from the global product re-factorized to their own rank. Each
client's product is first brought to the global LoRA scaling (``alpha / r`` differs between
ranks), so clients that compute the same function average to that function.
The new factors replace the old ones: no server optimizer step."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from fedgate.aggregation.lora import exact_aggregate, refactor_to_rank, rescale_factors
from fedgate.aggregation.server_opt import ServerOptimizer
from fedgate.aggregation.update import ClientUpdate
from fedgate.strategies.base import Aggregated, Arrays, RoundInputs, Strategy


class Exact(Strategy):
    name = "exact"
    summary = "per adapter, the weighted mean of B_k A_k, re-factorized by truncated SVD to the global rank"
    lora_only = True
    paper = "FlexLoRA: Bai et al., NeurIPS 2024"
    sums_updates = False
    sets_factors = True  # the re-factorized mean product replaces them

    def state_at_rank(self, state: Mapping[str, np.ndarray], rank: int, global_rank: int,
                      scale: float = 1.0) -> Arrays:
        return dict(state) if rank == global_rank else rescale_factors(refactor_to_rank(state, rank)[0], scale)

    def aggregate(self, params: Mapping[str, np.ndarray], updates: Sequence[ClientUpdate],
                  optimizer: ServerOptimizer, opt_state: Mapping[str, np.ndarray],
                  inputs: RoundInputs | None = None) -> Aggregated:
        if not updates:
            raise ValueError("aggregate: no updates")
        inputs = inputs or RoundInputs()
        sent, rank = inputs.sent, inputs.rank
        if sent is None or len(sent) != len(updates) or rank < 1:
            raise ValueError("aggregate: exact needs what each client was sent and the global rank")
        deltas, examples, per_layer, info = self.clipped_and_weighted(updates, [u.delta for u in updates])
        scales = inputs.scales or [1.0] * len(updates)
        locals_ = [rescale_factors({k: np.asarray(s[k], np.float64) + d[k] for k in d}, scale)
                   for s, d, scale in zip(sent, deltas, scales)]
        target, info["truncation_error"] = exact_aggregate(locals_, per_layer or examples, rank)
        new = {**params, **{k: v.astype(np.asarray(params[k]).dtype) for k, v in target.items()}}
        mean_delta = {k: new[k] - np.asarray(params[k]) for k in target}
        return Aggregated(new, dict(opt_state), mean_delta, info)
