"""One client's side of a round, without Flower: load the global state, train, reply a delta.

A simulation runs many rounds of many clients in one long-lived process, so the expensive
parts are cached per process: the backbone (one per model config, shared by every partition
that process serves) and each partition's encoded rows with their frozen lower layers. Only
adapter, gate and head weights change between rounds; they come from the server each time.
In the deployment runtime every message starts a fresh process and the caches start empty.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Collection, Mapping

import numpy as np
import torch

from fedgate.aggregation.privacy import noise_rng, privatize_update
from fedgate.batching import EncodedSplit, encode_pairs, encode_split, is_pairs
from fedgate.config import FedgateConfig
from fedgate.data.pairs import is_pair_dataset
from fedgate.engine import close_stepper, make_stepper
from fedgate import strategies
from fedgate.federated.client_rules import configure_adapters, shared_keys
from fedgate.federated.shards import client_shard
from fedgate.memory import peak_mib
from fedgate.model import RewardModel, build_reward_model, head_targets
from fedgate.state import adapter_state, from_numpy, load_adapter_state, state_delta, to_numpy, trainable_names
from fedgate.ridge import RidgeStats, pair_ridge_stats, ridge_stats
from fedgate.devices import pick_device
from fedgate.evaluation import evaluate, frozen_features
from fedgate.train import fit, prepare_cache

log = logging.getLogger(__name__)
MAX_CACHED_SHARDS = 16  # per process; a 100-client simulation must not keep 100 caches


def client_config(run_config: Mapping[str, Any], node_config: Mapping[str, Any]) -> FedgateConfig:
    """The run config with this node's own ``section.key`` settings on top (e.g. a node's
    ``train.batch-size``, ``train.device`` or ``adapter.r``); Flower's ``partition-id`` etc. are
    not ours. Without a node ``adapter.r``, ``federation.client-ranks`` gives the rank by partition."""
    own = {k: v for k, v in node_config.items() if "." in k}
    cfg = strategies.check(FedgateConfig.from_flat({**run_config, **own}))
    if own.keys() & {"adapter.alpha", "adapter.rank-scaling", "adapter.r"}:
        run = FedgateConfig.from_flat(run_config).adapter
        for key, mine, theirs in (("adapter.alpha", cfg.adapter.alpha, run.alpha),
                                  ("adapter.rank-scaling", cfg.adapter.rank_scaling, run.rank_scaling)):
            if mine != theirs:
                raise ValueError(f"node config sets {key}={mine!r}, the run config {theirs!r}: the server maps "
                                 f"adapters between ranks with the run's {key}, so a node may not change it")
        if cfg.adapter.r != run.r and not cfg.federation.heterogeneous_ranks:
            raise ValueError(f"node config sets adapter.r={cfg.adapter.r}, the run config {run.r}: a node of its "
                             "own rank needs federation.heterogeneous-ranks=true")
    ranks = cfg.federation.client_ranks
    if ranks and "adapter.r" not in own and "partition-id" in node_config:
        rank = ranks[int(node_config["partition-id"]) % len(ranks)]
        cfg = dataclasses.replace(cfg, adapter=dataclasses.replace(cfg.adapter, r=rank))
    return cfg


def round_seed(base: int, server_round: int, partition_id: int) -> int:
    """A distinct, reproducible seed per (run seed, round, client)."""
    return int(np.random.SeedSequence([base, server_round, partition_id]).generate_state(1)[0])


@dataclass
class LocalUpdate:
    delta: dict[str, np.ndarray]
    num_examples: int
    metrics: dict[str, float]
    gate_stats: dict[str, dict[str, float]]
    uplink: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # the strategy's extra records
    kept: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # what the strategy keeps (e.g. SCAFFOLD's c_i)
    personal: dict[str, np.ndarray] | None = None  # personal structural gate logits, kept locally


@dataclass
class LocalRound:
    """What a local round's training left, before it becomes the reply: computed in this
    process, or by the ranks of a multi-process client (fedgate/federated/ranks.py)."""

    after: dict[str, torch.Tensor]  # every adapter, gate and head tensor after training
    num_examples: int
    train_loss: float
    steps: int
    local: dict[str, float]  # metrics on the local held-out rows after training
    gate_stats: dict[str, dict[str, float]]
    train_s: float
    setup_s: float
    rss_peak_mb: float
    flipped_rows: int
    rows_trained: int  # by the rank that trained the most (all of them in one process)


def local_update(done: LocalRound, start: Mapping[str, torch.Tensor], cfg: FedgateConfig, server_round: int,
                 partition_id: int, prior: Mapping[str, float] | float | None = None, *,
                 extras: tuple[dict, dict, dict] = ({}, {}, {})) -> LocalUpdate:
    """The reply to the server from a finished local round: ``after - start`` (clipped and
    noised under local DP), gate statistics, metrics, and what the client keeps (personal
    structural gates). ``extras``: what the strategy's local rule finished with (arrays sent
    back, arrays kept, metrics: :class:`fedgate.strategies.LocalRule`)."""
    fed = cfg.federation
    rule = strategies.get(fed.strategy)  # e.g. no dense term, and under rolora not the frozen factor
    back = {k: v for k, v in start.items() if rule.returns(k, server_round)}
    delta = to_numpy(state_delta({k: done.after[k] for k in back}, back))
    own = ({k: v.numpy() for k, v in done.after.items() if k.endswith(".struct_logit")}
           if fed.personal_gates else None)
    gate_stats = done.gate_stats
    dp_metrics = {}
    if fed.dp != "off":
        gate_stats = {}  # statistics of this client's data the mechanism does not cover: not sent
    if fed.dp == "local":  # clipped and noised here: nothing clean leaves this client
        seed = cfg.train.seed if fed.dp_seeded else None  # seeded noise the server could regenerate: studies only
        delta, scale = privatize_update(delta, fed.clip_norm, fed.noise_multiplier(),
                                        noise_rng(seed, server_round, partition_id))
        dp_metrics["dp-clip-scale"] = scale
    uplink, kept, rule_metrics = extras
    metrics = {
        "train-loss": done.train_loss,
        **{f"local-{k.replace('_', '-')}": done.local[k] for k in ("auc", "pairwise_accuracy") if k in done.local},
        "steps": float(done.steps),
        "train-s": done.train_s,
        "setup-s": done.setup_s,
        "rss-peak-mb": done.rss_peak_mb,  # of this process so far: flat over rounds = no leak
        # what prior this round trained against (0 adapters = the fixed loss.gate-prior)
        "prior-adapters": float(len(prior)) if isinstance(prior, Mapping) else 0.0,
        "prior-mean": float(np.mean(list(prior.values()))) if isinstance(prior, Mapping) and prior else float("nan"),
        "flipped-rows": float(done.flipped_rows),
        "rank-rows-trained": float(done.rows_trained),  # the busiest rank's share of the rows seen
        **dp_metrics,
        **rule_metrics,
    }
    return LocalUpdate(delta, done.num_examples, metrics, gate_stats, uplink=dict(uplink), kept=dict(kept),
                       personal=own)


@dataclass
class _Shard:
    train: EncodedSplit
    holdout: EncodedSplit
    flipped_rows: int = 0  # training rows whose labels were flipped (conflicting feedback)


class _Cache:
    def __init__(self) -> None:
        self.models: dict[tuple, tuple[RewardModel, Any]] = {}
        self.shards: OrderedDict[tuple, _Shard] = OrderedDict()


_CACHE = _Cache()


def clear_cache() -> None:
    """Forget the cached backbones and shards of this process (tests; memory pressure)."""
    _CACHE.models.clear()
    _CACHE.shards.clear()


def _zero3(model: RewardModel) -> bool:
    return any(hasattr(p, "ds_id") for p in model.parameters())


class ClientTask:
    """A client's model and rows; cheap to construct once the process caches are warm."""

    def __init__(self, cfg: FedgateConfig, partition_id: int, num_partitions: int, *, progress: bool = False):
        self.cfg, self.partition_id, self.num_partitions = cfg, partition_id, num_partitions
        self.progress = progress
        self.device = pick_device(cfg.train.device)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        t0 = time.perf_counter()
        model_key = (cfg.model, cfg.adapter)
        if model_key not in _CACHE.models:
            torch.manual_seed(cfg.train.seed)
            model, tokenizer = build_reward_model(cfg.model, cfg.adapter)
            _CACHE.models[model_key] = (model.to(self.device), tokenizer)
        self.model, self.tokenizer = _CACHE.models[model_key]
        self.pad_id = self.tokenizer.pad_token_id
        shard_key = (model_key, cfg.data, cfg.shards, cfg.train.cache_lower_layers, partition_id, num_partitions)
        if shard_key not in _CACHE.shards:
            rows = client_shard(cfg, partition_id, num_partitions)
            flipped = sum(rows["train"]["flipped"]) if "flipped" in rows["train"].column_names else 0
            encode = encode_pairs if is_pair_dataset(rows["train"]) else encode_split
            shard = _Shard(*(encode(rows[k], self.tokenizer, cfg.model) for k in ("train", "holdout")),
                           flipped_rows=int(flipped))
            prepare_cache(self.model, [shard.train, shard.holdout], cfg, self.pad_id, self.device, progress)
            _CACHE.shards[shard_key] = shard
            while len(_CACHE.shards) > MAX_CACHED_SHARDS:
                _CACHE.shards.popitem(last=False)
        _CACHE.shards.move_to_end(shard_key)
        self.shard = _CACHE.shards[shard_key]
        self.setup_s = time.perf_counter() - t0

    def _load_global(self, global_state: Mapping[str, np.ndarray], pruned: Collection[str] = (),
                     personal: Mapping[str, np.ndarray] | None = None, server_round: int = 0
                     ) -> dict[str, torch.Tensor]:
        """Put the model into this round's configuration and load what the server sent, which
        must be exactly the shared tensors (:func:`client_rules.shared_keys`)."""
        configure_adapters(self.model, self.cfg, pruned, server_round)
        names = trainable_names(self.model)
        expected = shared_keys(names, self.cfg, pruned, server_round)
        if set(global_state) != set(expected):
            missing, extra = sorted(set(expected) - set(global_state)), sorted(set(global_state) - set(expected))
            raise KeyError(f"the server sent a different set of tensors than this client shares: missing "
                           f"{missing[:5]}, unexpected {extra[:5]} (strategy {self.cfg.federation.strategy}, "
                           f"{len(pruned)} pruned adapters)")
        state = from_numpy(global_state)
        load_adapter_state(self.model, state, only=expected)
        if self.cfg.federation.personal_gates:
            own = [n for n in names if n.endswith(".struct_logit")]
            mine = from_numpy(personal) if personal else {
                n: torch.full((1,), self.cfg.adapter.struct_init) for n in own}  # a new client: the initial gate
            load_adapter_state(self.model, mine, only=own)
        return state

    def _round_config(self, server_round: int) -> FedgateConfig:
        t = self.cfg.train
        return dataclasses.replace(self.cfg, train=dataclasses.replace(
            t, seed=round_seed(t.seed, server_round, self.partition_id)))

    def train(self, global_state: Mapping[str, np.ndarray], server_round: int,
              prior: Mapping[str, float] | float | None = None, *, pruned: Collection[str] = (),
              received: Mapping[str, Mapping[str, np.ndarray]] | None = None,
              kept: Mapping[str, Mapping[str, np.ndarray]] | None = None,
              personal: Mapping[str, np.ndarray] | None = None) -> LocalUpdate:
        """Local epochs from the global state; the reply is ``local - global``.

        ``pruned``: adapters the federation has pruned (off, not trained, not sent).
        ``received`` / ``kept``: the strategy's extra arrays by record name, from the train
        message and from what this client kept since its last round (SCAFFOLD's c and c_i).
        ``personal``: this client's own structural gate logits (``federation.personal-gates``)."""
        start = self._load_global(global_state, pruned, personal, server_round)
        done, extras = self._fit_round(self._round_config(server_round), start, prior, received or {}, kept or {})
        return local_update(done, start, self.cfg, server_round, self.partition_id, prior, extras=extras)

    def local_round(self, global_state: Mapping[str, np.ndarray], server_round: int,
                    prior: Mapping[str, float] | float | None = None, *, pruned: Collection[str] = (),
                    personal: Mapping[str, np.ndarray] | None = None) -> LocalRound:
        """The training part of :meth:`train`, for one rank of a multi-process client: every
        rank calls it in lockstep (ZeRO-3's gathers are collectives), the launcher turns rank
        0's result into the reply (:func:`local_update`). A strategy that exchanges extra
        arrays (SCAFFOLD) is not supported there."""
        start = self._load_global(global_state, pruned, personal, server_round)
        done, _ = self._fit_round(self._round_config(server_round), start, prior, {}, {})
        return done

    def _fit_round(self, cfg: FedgateConfig, start: Mapping[str, torch.Tensor],
                   prior: Mapping[str, float] | float | None, received: Mapping, kept: Mapping
                   ) -> tuple[LocalRound, tuple[dict, dict, dict]]:
        """fit() from the loaded global state with the strategy's local rule, then the
        held-out metrics, the state after, and what the rule finished with."""
        t0 = time.perf_counter()
        rule = strategies.create(cfg.federation).local_round(self.model, start, cfg, received, kept)
        stepper = make_stepper(self.model, cfg)
        try:
            result = fit(self.model, self.shard.train, cfg, self.pad_id, self.device, prior=prior,
                         progress=self.progress, stepper=stepper, **rule.hooks)
            extras = rule.finish(start)
            local, _ = evaluate(self.model, self.shard.holdout, cfg, self.pad_id, self.device)
            after = adapter_state(self.model)
        finally:
            close_stepper(stepper)
            if _zero3(self.model):
                # ZeRO-3 converted the weights for the engine just destroyed; the next round
                # builds the model afresh rather than reuse half-managed parameters.
                _CACHE.models.pop((self.cfg.model, self.cfg.adapter), None)
        done = LocalRound(after, len(self.shard.train), result.train_loss, result.steps, local, result.gate_stats,
                          time.perf_counter() - t0, self.setup_s, peak_mib(), self.shard.flipped_rows,
                          result.rows_trained)
        return done, extras

    def head_statistics(self, global_state: Mapping[str, np.ndarray], *,
                        pruned: Collection[str] = ()) -> RidgeStats:
        """Ridge sufficient statistics of this client's training rows under the global
        state (before round 1: the frozen backbone's features; ``pruned`` adapters off), for
        the federated head; on preference pairs, those of the least-squares Bradley-Terry head."""
        self._load_global(global_state, pruned)
        x = frozen_features(self.model, self.shard.train, self.cfg, self.pad_id, self.device)
        if is_pairs(self.shard.train):
            return pair_ridge_stats(x)
        return ridge_stats(x, head_targets(self.shard.train.labels, self.cfg.data.misaligned_threshold).numpy())

    def evaluate(self, global_state: Mapping[str, np.ndarray], *, pruned: Collection[str] = (),
                 personal: Mapping[str, np.ndarray] | None = None,
                 kept: Mapping[str, Mapping[str, np.ndarray]] | None = None) -> tuple[int, dict[str, float]]:
        """Metrics of the global state (with this client's own routing under personal gates,
        and what its strategy keeps on the client, e.g. fedsa's B) on this client's held-out
        rows: (rows, metrics)."""
        self._load_global(global_state, pruned, personal)
        strategies.get(self.cfg.federation.strategy).apply_kept(self.model, kept or {})
        t0 = time.perf_counter()
        metrics, _ = evaluate(self.model, self.shard.holdout, self.cfg, self.pad_id, self.device)
        keep = ("auc", "pairwise_accuracy", "f1_oracle", "mae", *(k for k in metrics if k.startswith("pearson_")))
        out = {k: float(metrics[k]) for k in keep if k in metrics}
        out.update({"eval-s": time.perf_counter() - t0, "setup-s": self.setup_s})
        return len(self.shard.holdout), out
