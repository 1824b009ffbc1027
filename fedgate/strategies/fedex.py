"""FedEx-LoRA (Singhal et al., "FedEx-LoRA: Exact Aggregation for Federated and Efficient
Fine-Tuning of Foundation Models", ACL 2025): average A and B as FedAvg does, and keep what
that misses, ``mean(B_k A_k) - mean(B) mean(A)`` (times the LoRA scaling), as a dense
residual added to each adapted layer's frozen weight. The global ``s B A + R`` is then
exactly the average of the clients' (with gates that differ between clients, the average of
the ungated updates: the gates multiply R as well). Uplink: the factors, as FedAvg. Downlink: the factors
plus one dense ``(d_out, d_in)`` matrix per adapted layer, full-rank bytes, every round.

Where fedgate departs from the paper: the residual lives inside the adapter
(``adapter.dense-residual``: ``y = W x + s_l g_t (s B A x + R x)``), so the gates scale it
like the rest of the update, and it is accumulated on the server and sent whole (a client
that missed rounds still starts from the global model). Clients of different ranks are
averaged in the global LoRA scaling after zero-padding, which keeps the aggregate exact.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from fedgate.aggregation.lora import LORA_A, LORA_B, RESIDUAL, _weights_for, lora_modules
from fedgate.aggregation.server_opt import ServerOptimizer
from fedgate.aggregation.update import ClientUpdate
from fedgate.strategies.base import Aggregated, Arrays, RoundInputs, Strategy


def local_factors(sent: Sequence[Mapping[str, np.ndarray]], deltas: Sequence[Arrays], strategy: Strategy, inputs: RoundInputs) -> list[Arrays]:
    """Each client's factors after its round, zero-padded to the global rank and in the global
    LoRA scaling (``deltas`` are already there)."""
    scales = inputs.scales or [1.0] * len(deltas)
    out = []
    for start, delta, scale in zip(sent, deltas, scales):
        keys = [k for k in delta if k.endswith((LORA_A, LORA_B))]
        start = strategy.at_global_rank({k: np.asarray(start[k], np.float64) for k in keys}, inputs.rank, scale)
        out.append({k: start[k] + delta[k] for k in keys})
    return out


def mean_product(locals_: Sequence[Arrays], weights: Sequence[float], module: str) -> np.ndarray:
    """``sum_k w_k B_k A_k`` with the weights normalized."""
    w = _weights_for(list(weights), module)
    return sum(wk * (s[module + LORA_B] @ s[module + LORA_A]) for wk, s in zip(w, locals_))


def plain_average(strategy: Strategy, params: Mapping[str, np.ndarray], updates: Sequence[ClientUpdate],
                  optimizer: ServerOptimizer, opt_state: Mapping[str, np.ndarray], inputs: RoundInputs | None
                  ) -> tuple[dict, dict, list[Arrays], list[float], dict]:
    """What the exact LoRA rules start from: (the global state stepped by the plain average
    of the clipped deltas in the global rank and scaling, the optimizer state, each client's
    local factors in that frame, the client weights, the round log's info)."""
    inputs = inputs or RoundInputs()
    if inputs.sent is None or len(inputs.sent) != len(updates) or inputs.rank < 1:
        raise ValueError(f"aggregate: {strategy.name} needs what each client was sent and the global rank")
    scales = inputs.scales or [1.0] * len(updates)
    deltas = [strategy.at_global_rank(u.delta, inputs.rank, s) for u, s in zip(updates, scales)]
    deltas, examples, _, info = strategy.clipped_and_weighted(updates, deltas)
    locals_ = local_factors(inputs.sent, deltas, strategy, inputs)
    new, state = optimizer.step(opt_state, params, strategy.combine(deltas, examples, None, inputs, info))
    return dict(new), state, locals_, examples, info


class FedExLoRA(Strategy):
    name = "fedex-lora"
    summary = ("A and B averaged; the residual mean(B_k A_k) - mean(B) mean(A) added to a dense frozen term "
               "(`adapter.dense-residual`): exact")
    lora_only = True
    paper = "FedEx-LoRA: Singhal et al., ACL 2025"
    travels_down = "every trainable tensor plus a dense d_out x d_in matrix per adapted layer"
    dense_residual = True
    per_layer_weights = False
    sums_updates = False  # the residual is a product of updates: not bounded by the clip
    sets_factors = True  # exact only with the plain average

    def aggregate(self, params: Mapping[str, np.ndarray], updates: Sequence[ClientUpdate],
                  optimizer: ServerOptimizer, opt_state: Mapping[str, np.ndarray],
                  inputs: RoundInputs | None = None) -> Aggregated:
        inputs = inputs or RoundInputs()
        new, state, locals_, examples, info = plain_average(self, params, updates, optimizer, opt_state, inputs)
        scaling, share = inputs.scaling, []
        for m in lora_modules(locals_[0]):
            key = m + RESIDUAL
            if key not in params:
                raise KeyError(f"aggregate: {self.name} needs {key} in the global state (adapter.dense-residual)")
            averaged = np.asarray(new[m + LORA_B], np.float64) @ np.asarray(new[m + LORA_A], np.float64)
            missed = scaling * (mean_product(locals_, examples, m) - averaged)
            new[key] = (np.asarray(params[key], np.float64) + missed).astype(np.asarray(params[key]).dtype)
            total = np.linalg.norm(scaling * mean_product(locals_, examples, m))
            share.append(float(np.linalg.norm(missed) / total) if total > 0 else 0.0)
        info["residual_share"] = round(float(np.max(share)), 6) if share else 0.0  # worst module
        mean_delta = {k: new[k] - np.asarray(params[k]) for k in new}
        return Aggregated(new, state, mean_delta, info)
