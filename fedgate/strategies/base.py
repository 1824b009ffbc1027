"""What an aggregation strategy is: one class that declares everything its rule changes in a
federation, so that a new rule is one new module in this package and its test.

Server side:
- :meth:`Strategy.aggregate`: one round's client deltas -> the new global state. The default
  clips (``federation.clip-norm``), weighs the clients (``federation.weighting``), brings
  heterogeneous ranks to the global rank, calls :meth:`Strategy.combine` and steps the global
  state with the strategy's server optimizer.
- :meth:`Strategy.state_at_rank`: the global state a node of another adapter rank starts from,
  with factors that give the global update under the node's own LoRA scaling (``alpha / r``
  differs between ranks; ``scale`` is the global scaling over the node's).
- :attr:`Strategy.downlink_records` / :attr:`Strategy.uplink_records`: extra arrays a train
  message carries each way (:meth:`Strategy.downlink`, :meth:`Strategy.after_round`), and
  :meth:`Strategy.saved` / :meth:`Strategy.load`: what the server keeps between rounds and
  checkpoints.

Client side:
- :meth:`Strategy.shares`: which tensors the server sends (in a given round),
  :meth:`Strategy.returns`: which of them a client sends back; :meth:`Strategy.freezes` and
  :meth:`Strategy.prepare_adapter`: how an adapter is set up before a round.
- :meth:`Strategy.local_round`: what a local round adds to plain training (an extra loss
  term, a correction after each optimizer step) and, when it ends, the arrays it sends back
  and the arrays the client keeps (:attr:`Strategy.client_records`).

Settings: :meth:`Strategy.check` refuses what the rule cannot be combined with, one line
naming the keys and the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, ClassVar, Mapping, Sequence

import numpy as np

from fedgate.aggregation.fedavg import Params, weighted_mean
from fedgate.aggregation.lora import (RESIDUAL, gate_weights, lora_modules, lora_rank, module_weighted_mean,
                                     pad_to_rank, rescale_factors, truncate_to_rank)
from fedgate.aggregation.privacy import noised_mean
from fedgate.aggregation.robust import clip_update
from fedgate.aggregation.server_opt import ServerOptimizer, server_optimizer
from fedgate.aggregation.update import ClientUpdate

if TYPE_CHECKING:
    import torch

    from fedgate.config import FederationConfig, FedgateConfig

Arrays = dict[str, np.ndarray]


@dataclass
class Aggregated:
    params: Params
    opt_state: dict[str, np.ndarray]
    mean_delta: Params
    info: dict = field(default_factory=dict)  # clip scales, truncation errors, updates left out, scores


@dataclass
class RoundInputs:
    """What some rules need beyond the updates. ``sent[k]``: what client k started from
    (``exact``: its local factors are ``sent + delta``, possibly at its own rank); ``rank``:
    the global adapter rank; ``scores[k]``: the server's validation score of the global state
    plus update k alone (``validated``). ``scales[k]``: client k's LoRA scaling over the global
    one (heterogeneous ranks: ``alpha / r_k`` against ``alpha / r``); its B times ``scales[k]``
    is in the global scaling. Central DP: ``noise`` draws the Gaussian noise of
    ``noise_multiplier``, and the noised sum is divided by ``sampled``, the clients sampled
    this round."""

    sent: Sequence[Mapping[str, np.ndarray]] | None = None
    rank: int = 0
    scales: Sequence[float] | None = None
    scaling: float = 1.0  # the global adapter's LoRA scaling (alpha / r); a dense residual holds scaling * B A
    server_round: int = 0
    seed: int = 0  # train.seed: what a rule draws fresh values from (flora's new A)
    scores: Sequence[float] | None = None
    noise: np.random.Generator | None = None
    noise_multiplier: float = 0.0
    sampled: int | None = None


@dataclass
class LocalRule:
    """What a strategy adds to one local round: ``hooks`` for :func:`fedgate.train.fit`
    (``extra_loss``, ``after_step``), and ``finish(start)`` run after training, which gives
    (arrays sent back by record name, arrays the client keeps by record name, metrics)."""

    hooks: dict = field(default_factory=dict)
    finish: Callable[[Mapping[str, "torch.Tensor"]], tuple[dict, dict, dict]] = lambda start: ({}, {}, {})


class Strategy:
    """Plain federated averaging of the deltas, stepped by server SGD at learning rate 1
    (FedAvg, McMahan et al., 2017). Subclasses change what differs, nothing else."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # one line: how updates combine, server optimizer, client side
    paper: ClassVar[str] = "McMahan et al., AISTATS 2017"  # where the rule comes from
    travels_up: ClassVar[str] = "every trainable tensor"  # what a client sends back each round
    travels_down: ClassVar[str] = "every trainable tensor"  # what the server sends each client
    server_optimizer: ClassVar[str] = "sgd"  # sgd | avgm | adagrad | adam | yogi
    default_server_lr: ClassVar[float] = 1.0
    per_layer_weights: ClassVar[bool] = True  # a weighted mean: federation.weighting=gates applies
    sums_updates: ClassVar[bool] = True  # a (weighted) sum of clipped updates: central DP applies
    lora_only: ClassVar[bool] = False  # needs LoRA factors (adapter.method=gated-lora)
    scores_updates: ClassVar[bool] = False  # needs the server's validation score of each update
    downlink_records: ClassVar[tuple[str, ...]] = ()  # extra ArrayRecords in a train message
    uplink_records: ClassVar[tuple[str, ...]] = ()  # extra ArrayRecords in a train reply
    client_records: ClassVar[tuple[str, ...]] = ()  # ArrayRecords a client keeps between rounds
    dense_residual: ClassVar[bool] = False  # fills each adapter's frozen dense term (adapter.dense-residual)
    admits_larger_ranks: ClassVar[bool] = True  # a node may train a rank above the global one (its extra part is cut)
    refuses_ranks: ClassVar[str] = ""  # why the rule cannot take federation.heterogeneous-ranks; "" = it can
    sets_factors: ClassVar[bool] = False  # the rule computes the new factors itself: no server step size
    self_prunes_ranks: ClassVar[bool] = False  # clients may prune their own rank (train.rank-prune-decay)

    def __init__(self, fed: "FederationConfig") -> None:
        self.fed = fed

    # ------------------------------------------------------------------ settings
    @classmethod
    def check(cls, cfg: "FedgateConfig") -> None:
        """Refuse settings this rule cannot be combined with (subclasses add their own)."""
        fed, name = cfg.federation, cls.name
        if fed.weighting == "gates" and not cls.per_layer_weights:
            raise ValueError(f"federation.weighting=gates weights a mean per layer; federation.strategy={name} "
                             f"is a robust rule that takes no per-layer weights")
        if cls.lora_only and cfg.adapter.method != "gated-lora":
            raise ValueError(f"adapter.method={cfg.adapter.method} has no LoRA factors or gates; "
                             f"federation.strategy={name} needs adapter.method=gated-lora")
        if cfg.engine.world_size > 1 and cls.records_in_use(cfg):
            raise ValueError(f"federation.strategy={name} exchanges its own arrays with each client or keeps them "
                             f"there ({', '.join(cls.records_in_use(cfg))}), which a client trained by several "
                             f"processes (engine.world-size={cfg.engine.world_size}) does not carry")
        if cfg.train.rank_prune_decay > 0 and not cls.self_prunes_ranks:
            raise ValueError(f"train.rank-prune-decay={cfg.train.rank_prune_decay} is HetLoRA's rank self-pruning; "
                             f"federation.strategy={name} would average a pruned client's zeroed components as an "
                             f"update: use federation.strategy=hetlora or train.rank-prune-decay=0")
        if fed.heterogeneous_ranks and cls.refuses_ranks:
            raise ValueError(f"federation.strategy={name} refuses federation.heterogeneous-ranks: {cls.refuses_ranks}")
        if fed.client_ranks and not cls.admits_larger_ranks and max(fed.client_ranks) > cfg.adapter.r:
            raise ValueError(f"federation.strategy={name} pads every client to the global rank: adapter.r="
                             f"{cfg.adapter.r} must be at least the largest of federation.client-ranks "
                             f"{fed.client_ranks}")
        if cls.sets_factors and fed.server_lr not in (0.0, 1.0):
            raise ValueError(f"federation.strategy={name} computes the new factors itself: federation.server-lr "
                             f"must be 1 (or 0 = default), got {fed.server_lr}")
        if cfg.adapter.dense_residual != cls.dense_residual:
            raise ValueError(f"adapter.dense-residual={str(cfg.adapter.dense_residual).lower()} but federation."
                             f"strategy={name} " + ("fills that dense term each round: set adapter.dense-residual=true"
                                                    if cls.dense_residual else
                                                    "never fills it: it would cost a base weight's memory per "
                                                    "adapted layer and a dense downlink for nothing"))
        if fed.dp == "central" and not cls.sums_updates:
            raise ValueError(f"federation.dp=central adds noise to a sum of clipped updates; federation.strategy="
                             f"{name} combines the updates one by one (its sensitivity to one client is not bounded "
                             f"by the clip)")

    @classmethod
    def records_in_use(cls, cfg: "FedgateConfig") -> tuple[str, ...]:
        """The strategy's own ArrayRecords that a run with these settings sends or keeps on a client."""
        return cls.downlink_records + cls.uplink_records + cls.client_records

    # ------------------------------------------------------------------ server side
    def optimizer(self) -> ServerOptimizer:
        """The server optimizer with the configured hyperparameters."""
        f = self.fed
        return server_optimizer(self.server_optimizer, f.server_lr or self.default_server_lr,
                                momentum=f.server_momentum, beta1=f.server_beta1, beta2=f.server_beta2,
                                tau=f.server_tau)

    def state_at_rank(self, state: Mapping[str, np.ndarray], rank: int, global_rank: int,
                      scale: float = 1.0) -> Arrays:
        """The shared global tensors for a node that trains adapter rank ``rank`` under a LoRA
        scaling ``global scaling / scale``: factors zero-padded (the same ``B A``) or truncated
        (its first ``rank`` components), then rescaled so that the node's scaled update is the
        global one."""
        if rank == global_rank:
            return dict(state)
        at_rank = truncate_to_rank(state, rank) if rank < global_rank else pad_to_rank(state, rank)
        return rescale_factors(at_rank, scale)

    def aggregate(self, params: Mapping[str, np.ndarray], updates: Sequence[ClientUpdate],
                  optimizer: ServerOptimizer, opt_state: Mapping[str, np.ndarray],
                  inputs: RoundInputs | None = None) -> Aggregated:
        """One round's new global state from validated client updates. Updates may cover a
        subset of ``params`` (tensors not sent stay as they are). Under local DP the updates
        arrive clipped and noised: the server does not clip them again."""
        if not updates:
            raise ValueError("aggregate: no updates")
        inputs = inputs or RoundInputs()
        scales = inputs.scales or [1.0] * len(updates)
        deltas = [self.at_global_rank(u.delta, inputs.rank, scale) for u, scale in zip(updates, scales)]
        deltas, examples, per_layer, info = self.clipped_and_weighted(updates, deltas)
        mean_delta = self.combine(deltas, examples, per_layer, inputs, info)
        new, state = optimizer.step(opt_state, params, mean_delta)
        return Aggregated(new, state, mean_delta, info)

    def clipped_and_weighted(self, updates: Sequence[ClientUpdate], deltas: list[Arrays]
                             ) -> tuple[list[Arrays], list[float], list[dict] | None, dict]:
        """(deltas clipped to ``federation.clip-norm``, each client's weight, per-layer
        weights under ``federation.weighting=gates`` or None, the round log's clip scales)."""
        fed, info = self.fed, {}
        if fed.clip_norm > 0 and fed.dp != "local":
            clipped = [clip_update(d, fed.clip_norm) for d in deltas]
            deltas = [d for d, _ in clipped]
            info["clip_scale"] = [s for _, s in clipped]
        examples = [1.0 if fed.weighting == "uniform" else float(u.num_examples) for u in updates]
        per_layer = (gate_weights([u.num_examples for u in updates], [u.gate_stats for u in updates])
                     if fed.weighting == "gates" else None)
        return deltas, examples, per_layer, info

    def at_global_rank(self, delta: Arrays, rank: int, scale: float = 1.0) -> Arrays:
        """With heterogeneous ranks, a delta in the global scaling (B times ``scale``),
        zero-padded (smaller rank) or cut (larger) to the global rank."""
        if not self.fed.heterogeneous_ranks or rank < 1:
            return delta
        modules = lora_modules(delta)
        r = lora_rank(delta, modules[0]) if modules else rank
        if r == rank:
            return delta
        delta = rescale_factors(delta, scale)
        return pad_to_rank(delta, rank) if r < rank else truncate_to_rank(delta, rank)

    def combine(self, deltas: list[Arrays], examples: list[float], per_layer: list[dict] | None,
                inputs: RoundInputs, info: dict) -> Params:
        """The round's one delta: the example- (or gate-) weighted mean; under central DP the
        noised mean of the clipped updates (fedgate/aggregation/privacy.py). ``info`` takes
        what the round log should show."""
        if self.fed.dp == "central":
            if inputs.noise is None or not inputs.noise_multiplier > 0:
                raise ValueError("aggregate: federation.dp=central needs a noise generator and a noise multiplier")
            info["dp_noise_std"] = inputs.noise_multiplier * self.fed.clip_norm / max(inputs.sampled or 0,
                                                                                     len(deltas))
            return noised_mean(deltas, self.fed.clip_norm, inputs.noise_multiplier, inputs.noise, inputs.sampled)
        if per_layer is not None:
            return module_weighted_mean(deltas, per_layer)
        return weighted_mean(deltas, examples)

    def downlink(self, sent: Mapping[str, np.ndarray]) -> dict[str, Arrays]:
        """Extra arrays (by record name) for a train message whose shared tensors are ``sent``."""
        return {}

    def after_round(self, uplinks: Sequence[Mapping[str, Arrays]], num_nodes: int) -> None:
        """Update the server's own state from the accepted replies' extra arrays."""

    def saved(self) -> Arrays:
        """Arrays to checkpoint so that a resumed run continues exactly."""
        return {}

    def load(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Restore what :meth:`saved` wrote (``arrays`` also holds other owners' keys)."""

    # ------------------------------------------------------------------ client side
    @classmethod
    def shares(cls, key: str, server_round: int = 0) -> bool:
        """Whether the trainable tensor ``key`` travels between server and clients in training
        round ``server_round`` (0: outside a training round, e.g. an evaluation message)."""
        return True

    @classmethod
    def returns(cls, key: str, server_round: int = 0) -> bool:
        """Whether a client sends back the delta of the shared tensor ``key`` in training round
        ``server_round``: every shared tensor it trains, never a dense term the server sets."""
        return not key.endswith(RESIDUAL)

    @classmethod
    def freezes(cls, tensor: str, server_round: int = 0) -> bool:
        """Whether an adapter's own tensor (``lora_A``, ``gate_weight``, ...) stays frozen in
        training round ``server_round``."""
        return False

    @classmethod
    def prepare_adapter(cls, name: str, module: "torch.nn.Module", cfg: "FedgateConfig") -> None:
        """Set an adapter up before a round (called under ``torch.no_grad``)."""

    @classmethod
    def apply_kept(cls, model: "torch.nn.Module", kept: Mapping[str, Arrays]) -> None:
        """Put what this client kept between rounds into its model before it is evaluated on
        the client's own rows (``fedsa``: its own B); most rules keep nothing of the model."""

    def local_round(self, model: "torch.nn.Module", start: Mapping[str, "torch.Tensor"], cfg: "FedgateConfig",
                    received: Mapping[str, Arrays], kept: Mapping[str, Arrays]) -> LocalRule:
        """What a local round adds to plain training, from the global tensors it starts from
        (``start``), the extra arrays the server sent and those the client kept."""
        return LocalRule()


def trainable(model: "torch.nn.Module") -> dict[str, "torch.nn.Parameter"]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}
