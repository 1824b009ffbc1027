"""HetLoRA (Cho et al., "Heterogeneous LoRA for Federated Fine-tuning of On-Device Foundation
Models", EMNLP 2024): clients train LoRA of different ranks; the server zero-pads every
client's factors to the largest rank and averages them with weights proportional to the
Frobenius norm of each client's update ``||s_k B_k A_k||`` (its "sparsity-weighted"
aggregation: a client whose adapter does more counts more), then sends each client the
first ``r_k`` components of the result.

Where fedgate departs from the paper:
- The weights are per adapter module (one norm per module and client) and multiply the
  example weights of ``federation.weighting`` (``uniform`` gives the paper's rule); tensors
  outside the LoRA factors (gates, head) take the example weights alone.
- Deltas are averaged, not padded local factors: a component above a client's rank keeps its
  global value for that client instead of being pulled towards zero. With equal ranks this is
  the same as the paper's average.
- Factors are first brought to the global LoRA scaling (``alpha / r`` differs between ranks).
- The clients' rank self-pruning is not built: it changes a node's rank between rounds,
  while fedgate decides a node's rank once and the server learns it from that decision
  (the rank query). Pruning would need a reply to carry the node's new rank and the
  client to rebuild its adapters at that rank.
"""

from __future__ import annotations

import numpy as np

from fedgate.aggregation.lora import ALL, _product, lora_modules, module_weighted_mean
from fedgate.strategies.base import Arrays, RoundInputs, Strategy


def norm_weights(locals_: list[Arrays], examples: list[float]) -> list[dict[str, float]]:
    """Per client ``{module: n_k * ||B_k A_k||_F, "*": n_k}``: HetLoRA's aggregation weights
    from each client's local factors (in one LoRA scaling)."""
    out = []
    for state, n in zip(locals_, examples):
        weights = {ALL: float(n)}
        for m in lora_modules(state):
            weights[m] = float(n) * float(np.linalg.norm(_product(state, m)))
        out.append(weights)
    for m in out[0]:  # a module no client moved: plain example weights
        if m != ALL and not sum(w[m] for w in out) > 0:
            for w in out:
                w[m] = w[ALL]
    return out


class HetLoRA(Strategy):
    name = "hetlora"
    summary = ("zero-padded factors averaged with weights by each client's update norm (of s B A), truncated to "
               "each client's rank")
    lora_only = True
    admits_larger_ranks = False  # padded to the global rank: a larger node's extra components would never move
    paper = "HetLoRA: Cho et al., EMNLP 2024"
    travels_up = travels_down = "every trainable tensor, at the client's rank"
    per_layer_weights = False  # its own per-module weights
    sums_updates = False  # the weights depend on each update: one client's influence is not bounded by the clip

    def combine(self, deltas: list[Arrays], examples: list[float], per_layer: list[dict] | None,
                inputs: RoundInputs, info: dict) -> Arrays:
        sent = inputs.sent
        if sent is None or len(sent) != len(deltas):
            raise ValueError("aggregate: hetlora needs what each client was sent")
        scales = inputs.scales or [1.0] * len(deltas)
        locals_ = []
        for start, delta, scale in zip(sent, deltas, scales):
            start = self.at_global_rank({k: np.asarray(start[k], np.float64) for k in delta}, inputs.rank, scale)
            locals_.append({k: start[k] + delta[k] for k in delta})
        weights = norm_weights(locals_, examples)
        modules = [m for m in weights[0] if m != ALL]
        total = {m: sum(w[m] for w in weights) for m in modules}
        info["norm_weight_share"] = [round(float(np.mean([w[m] / total[m] for m in modules])), 4) if modules
                                     else float("nan") for w in weights]
        return module_weighted_mean(deltas, weights)
