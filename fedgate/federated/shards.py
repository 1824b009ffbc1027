"""Which rows each side of a federation sees.

Clients split the training split among themselves (``shards.partitioner``); each keeps a
share of its shard's prompts as a local held-out set for federated evaluation. The server
scores the global model on the test split (and picks its F1 cut on the validation split):
rows no client ever sees. A file of preference pairs is shared out the same way, pair by
pair (:func:`fedgate.data.partition.partition_pairs`); conflicting feedback swaps a pair's
chosen and rejected replies.
"""

from __future__ import annotations

import functools
import logging

import datasets
import numpy as np

from fedgate.config import DataConfig, FedgateConfig, ShardsConfig
from fedgate.data import DataError, conflicting_feedback, partition_dataset, split_by_prompt
from fedgate.data.pairs import flip_pairs, is_pair_dataset
from fedgate.data.partition import partition_pairs
from fedgate.data.splits import load_splits

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=4)
def _partitions(data: DataConfig, shards: ShardsConfig, num_partitions: int) -> tuple[datasets.Dataset, ...]:
    train = load_splits(FedgateConfig(data=data))["train"]
    partition = partition_pairs if is_pair_dataset(train) else partition_dataset
    parts = partition(train, num_partitions, shards.partitioner, alpha=shards.alpha, seed=data.seed)
    log.info("partitioned %d training %s into %d shards (%s): sizes %s", len(train),
             "pairs" if is_pair_dataset(train) else "rows", num_partitions, shards.partitioner, [len(p) for p in parts])
    return tuple(parts)


def flipped_partitions(fraction: float, num_partitions: int, seed: int) -> list[int]:
    """The partitions whose training labels are flipped (``shards.flipped-clients``):
    ``round(fraction * num_partitions)`` of them, a seeded choice. ``shards.absent-clients``
    makes the same choice, so its run is the fair reference for a flipped run: the same
    clients, simply not there (their ClientApp refuses every message; the server records a
    failure and aggregates the others)."""
    count = round(fraction * num_partitions)
    order = np.random.default_rng([seed, 0xF11B]).permutation(num_partitions)
    return sorted(int(p) for p in order[:count])


def client_shard(cfg: FedgateConfig, partition_id: int, num_partitions: int) -> dict[str, datasets.Dataset]:
    """``{"train", "holdout"}`` rows of one client; deterministic for the config's data seed.

    Label sparsity (``shards.labeled-fraction``) keeps a seeded share of the training
    rows, the ones that carry labels. Conflicting feedback (``shards.flipped-clients`` /
    ``flipped-rows``) changes only training rows, and marks them in a ``flipped`` column: the
    local held-out rows keep the true labels, so an adversarial client's own evaluation shows
    what it learned."""
    if num_partitions < 1:
        raise DataError(f"num-partitions must be >= 1, got {num_partitions}")
    if not 0 <= partition_id < num_partitions:
        raise DataError(f"partition-id {partition_id} is outside 0..{num_partitions - 1} (num-partitions)")
    if partition_id in flipped_partitions(cfg.shards.absent_clients, num_partitions, cfg.data.seed):
        raise DataError(f"partition {partition_id} of {num_partitions} is absent (shards.absent-clients="
                        f"{cfg.shards.absent_clients}): it holds no rows and sends nothing in this run")
    shard = _partitions(cfg.data, cfg.shards, num_partitions)[partition_id]
    holdout = cfg.shards.local_holdout
    try:
        rows = split_by_prompt(shard, {"train": 1.0 - holdout, "holdout": holdout}, seed=cfg.data.seed + partition_id)
    except DataError as e:
        raise DataError(f"partition {partition_id} of {num_partitions} ({len(shard)} rows): cannot keep "
                        f"{holdout:.0%} of its prompts for local evaluation: {e}") from None
    spec = cfg.shards
    if spec.labeled_fraction < 1.0:  # label sparsity: rows without labels are left out (no unsupervised loss)
        train = rows["train"]
        keep = max(1, round(spec.labeled_fraction * len(train)))
        chosen = np.random.default_rng([cfg.data.seed, partition_id, 0x1AB]).choice(len(train), keep, replace=False)
        rows["train"] = train.select(sorted(chosen.tolist()))
    adversarial = partition_id in flipped_partitions(spec.flipped_clients, num_partitions, cfg.data.seed)
    fraction = 1.0 if adversarial else spec.flipped_rows
    if fraction > 0:  # on pairs: chosen and rejected swapped
        flip = flip_pairs if is_pair_dataset(rows["train"]) else conflicting_feedback
        rows["train"] = flip(rows["train"], fraction, seed=cfg.data.seed * 1000 + partition_id)
    return rows


def server_splits(cfg: FedgateConfig) -> dict[str, datasets.Dataset]:
    """``{"validation", "test"}``: the rows the server evaluates on, each capped at
    ``server.eval-limit`` rows (a seeded sample)."""
    splits = load_splits(cfg)
    out = {}
    for name in ("validation", "test"):
        ds = splits[name]
        limit = cfg.server.eval_limit
        out[name] = ds.shuffle(seed=cfg.data.seed).select(range(limit)) if limit and limit < len(ds) else ds
    return out
