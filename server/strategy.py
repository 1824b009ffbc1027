"""The Flower Strategy: a thin adapter between Flower messages and fedgate.aggregation.

It samples nodes, builds the train/evaluate messages (global adapters, round config, gate
prior), turns replies into :class:`ClientUpdate` objects, and hands them to the pure
aggregation functions. It also measures what each round costs on the wire.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.serde import recorddict_to_proto
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedgate.aggregation import ClientUpdate, fedavg, gate_profile, prior_from_profile
from fedgate.config import FedgateConfig
from fedgate.federated import protocol as P
from fedgate.state import check_compatible, from_numpy, to_numpy

log = logging.getLogger(__name__)


def to_record(state: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord(from_numpy(state))


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return to_numpy(record.to_torch_state_dict())


def wire_bytes(content: RecordDict) -> int:
    """Bytes of a message's content as serialized for the wire."""
    return recorddict_to_proto(content).ByteSize()


def array_bytes(record: ArrayRecord) -> int:
    """Bytes of the tensors alone (no framing, no array headers)."""
    return int(sum(a.numpy().nbytes for a in record.values()))


class FedgateStrategy(Strategy):
    """FedAvg of adapter deltas plus the global gate profile (see ``federation.*`` config)."""

    def __init__(self, cfg: FedgateConfig, global_state: dict[str, np.ndarray],
                 profile: dict[str, dict[str, float]] | None = None) -> None:
        self.cfg, self.fed = cfg, cfg.federation
        self.global_state = global_state
        self.shapes = {k: tuple(v.shape) for k, v in global_state.items()}
        self.profile = profile or {}
        self.round_log: dict = {}  # what the current round sent, received and rejected

    # ------------------------------------------------------------------ Flower interface
    def summary(self) -> None:
        f = self.fed
        log.info("fedgate strategy %s: fraction train %.2f / evaluate %.2f, min nodes train %d / evaluate %d / "
                 "available %d, server lr %g, gate prior %s", f.strategy, f.fraction_train, f.fraction_evaluate,
                 f.min_train_nodes, f.min_evaluate_nodes, f.min_available_nodes, f.server_lr, f.gate_prior)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.round_log = {"round": server_round, "rejected": [], "failures": []}
        if self.fed.fraction_train == 0.0:  # evaluation-only rounds, as in Flower's FedAvg
            return []
        nodes = self._sample(grid, server_round, self.fed.fraction_train, self.fed.min_train_nodes)
        config[P.SERVER_ROUND] = server_round
        content = RecordDict({P.ARRAYS: arrays, P.CONFIG: config, P.GATE_PRIOR: ConfigRecord(self.prior())})
        self.round_log.update(train_nodes=nodes, bytes_down=wire_bytes(content) * len(nodes),
                              array_bytes_down=array_bytes(arrays) * len(nodes))
        return [Message(content=content, message_type=MessageType.TRAIN, dst_node_id=n) for n in nodes]

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        updates, up, up_arrays = [], 0, 0
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                self.round_log["failures"].append({"node_id": node, "reason": msg.error.reason})
                log.warning("round %d: node %d failed: %s", server_round, node, msg.error.reason)
                continue
            up += wire_bytes(msg.content)
            up_arrays += array_bytes(msg.content[P.ARRAYS]) if P.ARRAYS in msg.content else 0
            try:
                updates.append(self._to_update(msg))
            except (KeyError, ValueError, TypeError) as e:
                self.round_log["rejected"].append({"node_id": node, "reason": str(e)})
                log.warning("round %d: rejected the update of node %d: %s", server_round, node, e)
        self.round_log.update(bytes_up=up, array_bytes_up=up_arrays, clients=[
            {"node_id": u.node_id, "num_examples": u.num_examples, **u.metrics} for u in updates])
        if not updates:
            log.warning("round %d: no usable update; the global adapters stay as they were", server_round)
            return None, None
        weights = [u.num_examples for u in updates]
        self.global_state, _ = fedavg(self.global_state, [u.delta for u in updates], weights, self.fed.server_lr)
        if any(u.gate_stats for u in updates):
            self.profile = gate_profile([u.gate_stats for u in updates], weights)
        return to_record(self.global_state), MetricRecord(_weighted_metrics(updates))

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        if self.fed.fraction_evaluate == 0.0:
            return []
        nodes = self._sample(grid, server_round, self.fed.fraction_evaluate, self.fed.min_evaluate_nodes)
        config[P.SERVER_ROUND] = server_round
        content = RecordDict({P.ARRAYS: arrays, P.CONFIG: config})
        self.round_log["eval_nodes"] = nodes
        self.round_log["bytes_down"] = self.round_log.get("bytes_down", 0) + wire_bytes(content) * len(nodes)
        return [Message(content=content, message_type=MessageType.EVALUATE, dst_node_id=n) for n in nodes]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        aucs, rows = [], 0
        for msg in replies:
            if msg.has_error():
                self.round_log["failures"].append({"node_id": msg.metadata.src_node_id, "reason": msg.error.reason,
                                                   "stage": "evaluate"})
                continue
            self.round_log["bytes_up"] = self.round_log.get("bytes_up", 0) + wire_bytes(msg.content)
            m = msg.content[P.METRICS]
            rows += int(m[P.NUM_EXAMPLES])
            self.round_log.setdefault("eval_clients", []).append({"node_id": msg.metadata.src_node_id, **dict(m)})
            if np.isfinite(m.get("auc", float("nan"))):
                aucs.append(float(m["auc"]))
        if not aucs:
            return None
        return MetricRecord({"auc-mean": float(np.mean(aucs)), "auc-worst": float(np.min(aucs)),
                             "nodes": len(aucs), P.NUM_EXAMPLES: rows})

    # ------------------------------------------------------------------ helpers
    def prior(self) -> dict[str, float]:
        """The gate prior sent with the next train message: the global profile's mean token
        gates (``federation.gate-prior = global``), or nothing so that clients use the fixed
        ``loss.gate-prior``."""
        if self.fed.gate_prior != "global":
            return {}
        return prior_from_profile(self.profile)

    def _sample(self, grid: Grid, server_round: int, fraction: float, min_nodes: int) -> list[int]:
        wanted = max(self.fed.min_available_nodes, min_nodes)
        deadline = time.monotonic() + self.fed.round_timeout
        while len(nodes := sorted(grid.get_node_ids())) < wanted:
            if time.monotonic() > deadline:
                raise TimeoutError(f"round {server_round}: only {len(nodes)} nodes connected after "
                                   f"{self.fed.round_timeout:.0f} s, {wanted} needed (federation.min-available-nodes)")
            log.info("waiting for nodes: %d connected, %d needed", len(nodes), wanted)
            time.sleep(1.0)
        size = min(len(nodes), max(int(len(nodes) * fraction), min_nodes))
        rng = random.Random(self.cfg.train.seed * 100_003 + server_round)  # reproducible sampling
        return sorted(rng.sample(nodes, size))

    def _to_update(self, msg: Message) -> ClientUpdate:
        content = msg.content
        for key in (P.ARRAYS, P.METRICS):
            if key not in content:
                raise KeyError(f"reply has no {key!r} record")
        delta = from_record(content[P.ARRAYS])
        check_compatible(self.shapes, delta, what="update")
        bad = [k for k, v in delta.items() if not np.isfinite(v).all()]
        if bad:
            raise ValueError(f"update contains NaN or Inf in {bad[:3]}")
        metrics = {k: float(v) for k, v in content[P.METRICS].items()}
        n = int(metrics.pop(P.NUM_EXAMPLES, -1))
        if n <= 0:
            raise ValueError(f"reply metric {P.NUM_EXAMPLES!r} must be a positive count, got {n}")
        gates = {}
        if P.GATE_TOKEN in content and P.GATE_STRUCT in content:
            gates = P.join_gate_stats(dict(content[P.GATE_TOKEN]), dict(content[P.GATE_STRUCT]),
                                      sender=f"node {msg.metadata.src_node_id}")
        return ClientUpdate(msg.metadata.src_node_id, delta, n, metrics, gates)


def _weighted_metrics(updates: list[ClientUpdate]) -> dict[str, float]:
    """Example-weighted means of the clients' scalar training metrics (NaN entries skipped)."""
    out: dict[str, float] = {P.NUM_EXAMPLES: float(sum(u.num_examples for u in updates))}
    for key in sorted({k for u in updates for k in u.metrics}):
        pairs = [(u.metrics[key], u.num_examples) for u in updates if np.isfinite(u.metrics.get(key, np.nan))]
        if pairs:
            values, w = zip(*pairs)
            out[key] = float(np.average(values, weights=w))
    return out
