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

Rank self-pruning (``train.rank-prune-decay`` = the paper's decay factor gamma, 0 = off): each
client adds ``lambda ||B_tail||_F ||A_tail||_F`` to its local loss (``train.rank-prune-lambda``),
summed over its adapters, the tail being components ``floor(gamma r)`` to ``r`` of its live rank
``r``; when the tail's size after local training is below its size after the client's
previous round, the client keeps ``floor(gamma r)`` components from then on. Where fedgate
departs from the paper:
- A client's layers keep the rank it was built with; pruned components are held at zero (zeroed
  when the round starts and after every optimizer step), so they cost the same compute and
  travel as zeros: a pruned client's bytes are its built rank's. The server keeps the rank the
  node reported; the zeroed components reach it as the update ``-start``, which pulls the global
  components towards zero with that client's weight, as the paper's zero-padding does.
- The comparison is made at an unchanged live rank: after a prune the client only records the
  new tail's size, so it prunes at most every second round it trains. It never goes below one
  component. The live rank is the client's state between rounds (Flower's ``context.state``).
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch

from fedgate.aggregation.lora import ALL, _product, lora_modules, module_weighted_mean
from fedgate.inject import adapter_modules
from fedgate.strategies.base import Arrays, LocalRule, RoundInputs, Strategy

LIVE_RANK = "hetlora-rank"  # what a self-pruning client keeps: its live rank and its tail's last size


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
               "each client's rank; clients' rank self-pruning with `train.rank-prune-decay` (off by default)")
    lora_only = True
    admits_larger_ranks = False  # padded to the global rank: a larger node's extra components would never move
    paper = "HetLoRA: Cho et al., EMNLP 2024"
    travels_up = travels_down = "every trainable tensor, at the client's rank"
    per_layer_weights = False  # its own per-module weights
    sums_updates = False  # the weights depend on each update: one client's influence is not bounded by the clip
    self_prunes_ranks = True
    client_records = (LIVE_RANK,)

    @classmethod
    def records_in_use(cls, cfg) -> tuple[str, ...]:
        used = super().records_in_use(cfg)
        return used if cfg.train.rank_prune_decay > 0 else tuple(r for r in used if r not in cls.client_records)

    @classmethod
    def check(cls, cfg) -> None:
        if cfg.train.rank_prune_decay > 0 and cfg.engine.name != "torch":
            raise ValueError("train.rank-prune-decay holds pruned components at zero after each optimizer step, and "
                             "DeepSpeed owns (and may partition) the weights it steps: use engine.name=torch")
        super().check(cfg)

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

    # client
    @classmethod
    def apply_kept(cls, model: torch.nn.Module, kept: Mapping[str, Arrays]) -> None:
        """A self-pruning client's own model: the global one without its pruned components."""
        live = live_rank(kept.get(LIVE_RANK) or {})
        if live is not None:
            zero_components(lora_layers(model), live)

    def local_round(self, model: torch.nn.Module, start: Mapping[str, torch.Tensor], cfg,
                    received: Mapping[str, Arrays], kept: Mapping[str, Arrays]) -> LocalRule:
        layers = lora_layers(model)
        if cfg.train.rank_prune_decay <= 0 or not layers:  # nothing to prune (every adapter switched off)
            return LocalRule()
        pruning = RankSelfPruning(layers, cfg.train.rank_prune_decay, cfg.train.rank_prune_lambda,
                                  kept.get(LIVE_RANK) or {})
        return LocalRule(hooks={"extra_loss": pruning.extra_loss, "after_step": pruning.after_step},
                         finish=pruning.finish)


def lora_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's enabled LoRA adapters."""
    return [m for m in adapter_modules(model).values() if m.enabled]


def live_rank(record: Mapping[str, np.ndarray]) -> int | None:
    """The live rank a self-pruning client kept after its last round (None before its first)."""
    return int(np.asarray(record["live-rank"]).ravel()[0]) if "live-rank" in record else None


@torch.no_grad()
def zero_components(layers: list[torch.nn.Module], live: int) -> None:
    """Zero every LoRA component from ``live`` on (rows of A, columns of B)."""
    for m in layers:
        m.lora_A[live:].zero_()
        m.lora_B[:, live:].zero_()


class RankSelfPruning:
    """One client's rank self-pruning for one local round (see the module docstring), over its
    LoRA ``layers``, from what it ``kept`` after its last round (nothing on its first)."""

    def __init__(self, layers: list[torch.nn.Module], decay: float, lam: float,
                 kept: Mapping[str, np.ndarray]) -> None:
        if not layers:
            raise ValueError("rank self-pruning needs at least one enabled LoRA adapter")
        self.layers, self.decay, self.lam = layers, decay, lam
        kept_rank = live_rank(kept)
        self.came_back = kept_rank is not None  # what the client kept after its last round
        self.live = kept_rank if self.came_back else min(m.lora_A.shape[0] for m in layers)
        self.last = float(np.asarray(kept["tail"]).ravel()[0]) if "tail" in kept else math.nan
        zero_components(self.layers, self.live)

    @property
    def pruned_rank(self) -> int:
        """The rank a prune leaves, which is also where the tail starts (at least one component)."""
        return max(1, math.floor(self.decay * self.live))

    def tail(self) -> torch.Tensor:
        """``sum over adapters of ||B[:, k:live]||_F ||A[k:live]||_F``, k = :attr:`pruned_rank`."""
        k, live = self.pruned_rank, self.live
        terms = [m.lora_B[:, k:live].norm() * m.lora_A[k:live].norm() for m in self.layers] if k < live else []
        return torch.stack(terms).sum() if terms else torch.zeros(())

    def extra_loss(self) -> torch.Tensor:
        return self.lam * self.tail()

    def after_step(self, optimizer) -> None:
        zero_components(self.layers, self.live)

    def finish(self, start: Mapping[str, torch.Tensor]) -> tuple[dict, dict, dict]:
        """(nothing sent, the live rank and tail size kept, metrics), pruning when the tail shrank."""
        with torch.no_grad():
            size = float(self.tail())
        before = self.live
        prune = self.pruned_rank < self.live and size < self.last
        if prune:
            self.live = self.pruned_rank
            zero_components(self.layers, self.live)
        kept = {LIVE_RANK: {"live-rank": np.array([self.live], np.int64),
                            "tail": np.array([math.nan if prune else size])}}  # compared at an unchanged rank
        return {}, kept, {"hetlora-live-rank": float(self.live), "hetlora-tail": size,
                          "hetlora-pruned-components": float(before - self.live),
                          "hetlora-state-kept": float(self.came_back)}
