"""The Flower Strategy: the adapter between Flower messages and the aggregation strategy
that ``federation.strategy`` names (fedgate/strategies/).

It samples nodes, builds each node's train/evaluate message (the shared global tensors at
the node's rank, the round config with the pruned adapters, the gate prior, the strategy's
own records), validates every reply into a :class:`ClientUpdate` (a bad one is rejected
with the node id and reason, never averaged), and hands the updates to the strategy. It
keeps what every strategy shares across rounds (server optimizer state, pruning streaks,
node ranks, the privacy accountant's rates) and measures what each round costs on the wire.
"""

from __future__ import annotations

import logging
import random
import re
import time
from typing import Callable, Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedgate import strategies
from fedgate.aggregation import ClientUpdate
from fedgate.aggregation.lora import lora_modules, lora_rank, start_error
from fedgate.aggregation.privacy import noise_rng, privacy_record
from fedgate.config import FedgateConfig
from fedgate.federated import protocol as P
from fedgate.federated.client_rules import shared_keys
from fedgate.federated.gate_state import GateState
from server.messages import array_bytes, from_record, layout, parse_train_reply, to_record, wire_bytes
from server.round_log import RoundLog

__all__ = ["FedgateStrategy", "from_record", "to_record", "wire_bytes"]
log = logging.getLogger(__name__)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # colour codes in the tracebacks Ray puts into error reasons


class FedgateStrategy(Strategy):
    """Every ``federation.strategy`` through Flower (see module docstring)."""

    def __init__(self, cfg: FedgateConfig, global_state: dict[str, np.ndarray],
                 profile: dict[str, dict[str, float]] | None = None, saved: tuple[dict, dict] | None = None,
                 scorer: Callable[[dict[str, np.ndarray], list[str]], float] | None = None) -> None:
        """``scorer(state, pruned)``: the server's validation ROC-AUC of a global state, which
        ``federation.strategy=validated`` needs (the ServerApp passes its evaluator's)."""
        self.cfg, self.fed = strategies.check(cfg), cfg.federation
        self.rule = strategies.create(self.fed)
        if self.rule.scores_updates and scorer is None:
            raise ValueError(f"federation.strategy={self.fed.strategy} scores updates on the server's validation "
                             f"rows; give the strategy a scorer")
        self.scorer = scorer
        self.global_state = global_state
        self.gates = GateState(self.fed, profile)
        self.optimizer = self.rule.optimizer()
        modules = lora_modules(global_state)
        self.rank = lora_rank(global_state, modules[0]) if modules else 0
        self.opt_state: dict[str, np.ndarray] = {}
        self.node_ranks: dict[int, int] = {}  # heterogeneous ranks: each admitted node's adapter rank
        self.node_info: dict[int, dict[str, int]] = {}  # what each node said when asked: rank, partition
        self.dp_rates: list[float] = []  # each private round's sampling rate, for the accountant
        self.dp_sigma: float | None = None
        if saved is not None:
            self.load_saved(*saved)
        if not self.opt_state:
            self.opt_state = self.optimizer.init(self.shared_state())
        self.sent: dict[int, dict[str, np.ndarray]] = {}  # what each node of this round started from
        self.outbox: list[Message] = []  # the messages of the current stage (Flower sets their ids on sending)
        self.round_log = RoundLog()  # what the current round sent, received and rejected

    # ------------------------------------------------------------------ state across rounds
    @property
    def profile(self) -> dict[str, dict[str, float]]:
        """The global gate profile after the last round (fedgate/federated/gate_state.py)."""
        return self.gates.profile

    @property
    def pruned(self) -> list[str]:
        return self.gates.pruned

    def shared_state(self, server_round: int = 0) -> dict[str, np.ndarray]:
        """The global tensors that travel in training round ``server_round`` (0: outside a
        training round): not pruned, not kept local."""
        keys = shared_keys(self.global_state, self.cfg, self.pruned, server_round)
        return {k: self.global_state[k] for k in keys}

    def saved(self) -> tuple[dict[str, np.ndarray], dict]:
        """(arrays, JSON metadata) to checkpoint so that a resumed run continues exactly."""
        arrays = {f"opt/{k}": v for k, v in self.opt_state.items()}
        arrays.update(self.rule.saved())
        meta = {**self.gates.saved(), "node_ranks": {str(k): v for k, v in self.node_ranks.items()},
                "node_info": {str(k): v for k, v in self.node_info.items()},
                "dp_rates": self.dp_rates, "dp_sigma": self.dp_sigma}  # a resumed run keeps its privacy loss
        return arrays, meta

    def load_saved(self, arrays: dict, meta: dict) -> None:
        self.opt_state = {k[4:]: v for k, v in arrays.items() if k.startswith("opt/")}
        self.rule.load(arrays)
        self.gates.load(meta)
        self.node_ranks = {int(k): int(v) for k, v in meta.get("node_ranks", {}).items()}
        self.node_info = {int(k): {f: int(x) for f, x in v.items()} for k, v in meta.get("node_info", {}).items()}
        self.dp_rates = [float(q) for q in meta.get("dp_rates", [])]
        self.dp_sigma = meta.get("dp_sigma")

    # ------------------------------------------------------------------ Flower interface
    def summary(self) -> None:
        f = self.fed
        log.info("fedgate strategy %s (%s, server optimizer %s): fraction train %.2f / evaluate %.2f, min nodes "
                 "train %d / evaluate %d / available %d, weighting %s, clip %g, gate prior %s, prune %g x %d, "
                 "personal gates %s, heterogeneous ranks %s", f.strategy, self.rule.summary,
                 self.optimizer, f.fraction_train, f.fraction_evaluate, f.min_train_nodes, f.min_evaluate_nodes,
                 f.min_available_nodes, f.weighting, f.clip_norm, f.gate_prior, f.prune_threshold, f.prune_patience,
                 f.personal_gates, f.heterogeneous_ranks)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """``arrays`` is ignored: each node gets the strategy's shared state at its own rank."""
        self.round_log = RoundLog(round=server_round)
        self.sent = {}
        if self.fed.fraction_train == 0.0:  # evaluation-only rounds, as in Flower's FedAvg
            return []
        nodes = self.sample_nodes(grid, server_round, self.fed.fraction_train, self.fed.min_train_nodes)
        self.round_log.num_nodes = len(grid.get_node_ids())
        nodes = self.known_ranks(grid, nodes, server_round)
        config[P.SERVER_ROUND] = server_round
        config[P.PRUNED] = ",".join(self.pruned)
        prior = ConfigRecord(self.gates.prior())
        messages, down, down_arrays = [], 0, 0
        for node in nodes:
            self.sent[node] = self.state_for(node, server_round)
            if self.node_ranks.get(node, self.rank) < self.rank:  # what truncation loses of the global update
                self.round_log.rule.setdefault("start_truncation_error", {})[str(node)] = round(
                    start_error(self.shared_state(server_round), self.sent[node], self.node_scale(node)), 6)
            arrays = {P.ARRAYS: to_record(self.sent[node])}
            arrays.update({name: to_record(extra) for name, extra in self.rule.downlink(self.sent[node]).items()})
            content = RecordDict({**arrays, P.CONFIG: config, P.GATE_PRIOR: prior})
            down += wire_bytes(content)
            down_arrays += sum(array_bytes(r) for r in arrays.values())  # with the strategy's own (SCAFFOLD's c)
            messages.append(Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node))
        self.round_log.train_nodes, self.round_log.bytes_down, self.round_log.array_bytes_down = nodes, down, down_arrays
        self.outbox = messages
        return messages

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        updates, sent, extras, up, up_arrays, answered = [], [], [], 0, 0, set()
        for msg in replies:
            node = self._origin(msg)
            answered.add(node)
            if msg.has_error():
                self._failed(server_round, node, msg, "train")
                continue
            up += wire_bytes(msg.content)
            up_arrays += sum(array_bytes(msg.content[name]) for name in (P.ARRAYS, *self.rule.uplink_records)
                             if name in msg.content)
            try:
                if node not in self.sent:
                    raise ValueError("a reply from a node that was not sent a train message this round")
                expected = layout({k: v for k, v in self.sent[node].items()
                                   if self.rule.returns(k, server_round)})
                # a local-DP release is noised to a large norm by design: no norm bound for it
                bound = 0.0 if self.fed.dp == "local" else self.fed.max_update_norm
                update, extra, norm = parse_train_reply(msg, expected, bound,
                                                        dict.fromkeys(self.rule.uplink_records, expected))
            except (KeyError, ValueError, TypeError) as e:
                self.round_log.rejected.append({"node_id": node, "reason": str(e)})
                log.warning("round %d: rejected the update of node %d: %s", server_round, node, e)
                continue
            update.metrics["update-norm"] = norm
            updates.append(update)
            sent.append(self.sent[node])
            extras.append(extra)
        self._dropped(server_round, [n for n in self.sent if n not in answered], "train")
        self.round_log.bytes_up, self.round_log.array_bytes_up = up, up_arrays
        self.round_log.clients = [{"node_id": u.node_id, "num_examples": u.num_examples, **u.metrics} for u in updates]
        if len(updates) < max(1, self.fed.min_train_nodes):
            reason = (f"{len(updates)} usable update(s), federation.min-train-nodes is {self.fed.min_train_nodes}: "
                      "the global adapters stay as they were")
            self.round_log.skipped = reason
            log.warning("round %d: %s", server_round, reason)
            return None, None
        self._aggregate(updates, sent, server_round)
        self.rule.after_round(extras, self.round_log.num_nodes or len(updates))
        new = self.gates.update([u.gate_stats for u in updates], [u.num_examples for u in updates], self.global_state,
                                server_round)
        if new:
            self.round_log.rule["newly_pruned"] = new
        return to_record(self.global_state), MetricRecord(_weighted_metrics(updates))

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        if self.fed.fraction_evaluate == 0.0:
            return []
        nodes = self.sample_nodes(grid, server_round, self.fed.fraction_evaluate, self.fed.min_evaluate_nodes)
        nodes = self.known_ranks(grid, nodes, server_round)
        config[P.SERVER_ROUND] = server_round
        config[P.PRUNED] = ",".join(self.pruned)
        self.round_log.eval_nodes = nodes
        messages = self.outbox = []
        for node in nodes:
            content = RecordDict({P.ARRAYS: to_record(self.state_for(node)), P.CONFIG: config})
            self.round_log.bytes_down += wire_bytes(content)
            messages.append(Message(content=content, message_type=MessageType.EVALUATE, dst_node_id=node))
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        scores: dict[str, list[float]] = {"auc": [], "pairwise_accuracy": []}  # rated rows / preference pairs
        rows, answered = 0, set()
        for msg in replies:
            node = self._origin(msg)
            answered.add(node)
            if msg.has_error():
                self._failed(server_round, node, msg, "evaluate")
                continue
            self.round_log.bytes_up += wire_bytes(msg.content)
            m = msg.content[P.METRICS]
            rows += int(m[P.NUM_EXAMPLES])
            self.round_log.eval_clients.append({"node_id": node, **dict(m)})
            for key, values in scores.items():
                if np.isfinite(m.get(key, float("nan"))):
                    values.append(float(m[key]))
        self._dropped(server_round, [n for n in self.round_log.eval_nodes if n not in answered], "evaluate")
        out = {}
        for key, values in scores.items():
            if values:  # "auc-mean", "auc-worst"; on pairs "pairwise_accuracy-mean", ...
                out.update({f"{key}-mean": float(np.mean(values)), f"{key}-worst": float(np.min(values)),
                            "nodes": len(values)})
        return MetricRecord({**out, P.NUM_EXAMPLES: rows}) if out else None

    # ------------------------------------------------------------------ helpers
    def _origin(self, reply: Message) -> int:
        """The node a reply speaks for. An error the SuperLink generates itself (the node
        stopped sending heartbeats) comes from the SuperLink's own id: it belongs to the
        node the answered message was sent to."""
        src = reply.metadata.src_node_id
        if src != SUPERLINK_NODE_ID:
            return src
        answered = reply.metadata.reply_to_message_id
        return next((m.metadata.dst_node_id for m in self.outbox if answered and m.metadata.message_id == answered),
                    src)

    def _failed(self, server_round: int, node: int, msg: Message, stage: str) -> None:
        """A node answered with an error (its ClientApp raised, or the SuperLink reports it
        offline): recorded, never fatal to the run."""
        reason = _ANSI.sub("", msg.error.reason or "")
        self.round_log.failures.append({"node_id": node, "stage": stage, "code": int(msg.error.code),
                                        "reason": reason})
        last = next((line.strip() for line in reversed(reason.splitlines()) if line.strip()), "no reason given")
        log.warning("round %d: node %d failed to %s: %s", server_round, node, stage, last[-400:])

    def _dropped(self, server_round: int, nodes: list[int], stage: str) -> None:
        """Nodes that were sent a message and did not answer within ``federation.round-timeout``
        (stragglers): left out of this round; a late reply is never read."""
        for node in nodes:
            self.round_log.dropped.append(
                {"node_id": node, "stage": stage, "reason": f"no reply within {self.fed.round_timeout:g} s "
                                                            "(federation.round-timeout)"})
            log.warning("round %d: node %d did not %s within %g s; dropped from this round", server_round, node,
                        stage, self.fed.round_timeout)

    def state_for(self, node: int, server_round: int = 0) -> dict[str, np.ndarray]:
        """The shared global tensors at ``node``'s adapter rank and LoRA scaling."""
        state, rank = self.shared_state(server_round), self.node_ranks.get(node, self.rank)
        return self.rule.state_at_rank(state, rank, self.rank, 1.0 / self.node_scale(node))

    def node_scale(self, node: int) -> float:
        """``node``'s LoRA scaling over the global one: ``alpha / r`` (or ``alpha / sqrt(r)``)
        at the node's rank against the global rank; one alpha for the whole federation."""
        rank, spec = self.node_ranks.get(node, self.rank), self.cfg.adapter
        return 1.0 if rank == self.rank or self.rank < 1 else spec.scaling_at(rank) / spec.scaling_at(self.rank)

    def _aggregate(self, updates: list[ClientUpdate], sent: list[dict[str, np.ndarray]], server_round: int) -> None:
        scores = None
        if self.rule.scores_updates:  # each update applied alone, scored by the server
            deltas = [self.rule.at_global_rank(u.delta, self.rank, self.node_scale(u.node_id)) for u in updates]
            scores = [self.scorer({k: v + d[k] if k in d else v for k, v in self.global_state.items()}, self.pruned)
                      for d in deltas]
        sigma, noise, sampled = 0.0, None, None
        if self.fed.dp != "off":
            # the rate this round really sampled at (min-train-nodes can raise it above fraction-train)
            rate = len(self.sent) / max(1, self.round_log.num_nodes or len(self.sent))
            self.dp_rates.append(rate if self.fed.dp == "central" else 1.0)
            if self.dp_sigma is None:  # a target epsilon is solved once, at the first round's rate
                self.dp_sigma = self.fed.noise_multiplier(rate)
            sigma = self.dp_sigma
        if self.fed.dp == "central":
            noise = noise_rng(self.cfg.train.seed if self.fed.dp_seeded else None, server_round)
            sampled = len(self.sent)
        t0 = time.perf_counter()
        result = self.rule.aggregate(self.global_state, updates, self.optimizer, self.opt_state, strategies.RoundInputs(
            sent=sent, rank=self.rank, scales=[self.node_scale(u.node_id) for u in updates],
            scaling=self.cfg.adapter.scaling, server_round=server_round, seed=self.cfg.train.seed, scores=scores, noise=noise, noise_multiplier=sigma, sampled=sampled))
        if self.fed.dp != "off":
            self.round_log.privacy = privacy_record(self.fed, sigma, self.dp_rates)
        self.round_log.rule["aggregate_ms"] = round(1000 * (time.perf_counter() - t0), 3)
        self.global_state, self.opt_state = result.params, result.opt_state
        self.round_log.rule.update(result.info)
        if "excluded" in result.info:  # krum, validated: indices into this round's updates -> node ids
            self.round_log.rule["excluded"] = [updates[i].node_id for i in result.info["excluded"]]

    def ask_nodes(self, grid: Grid, nodes: list[int], server_round: int) -> list[int]:
        """Ask each of ``nodes`` not asked before for its adapter rank and partition id (one
        query message each, once per node). Returns the nodes the server knows, in the order
        given; one that does not answer is recorded as a failure and asked again next time."""
        unknown = [n for n in nodes if n not in self.node_info]
        queries = [Message(RecordDict({P.CONFIG: ConfigRecord({P.ASK: P.ASK_NODE, P.SERVER_ROUND: server_round})}),
                           message_type=MessageType.QUERY, dst_node_id=n) for n in unknown]
        for reply in grid.send_and_receive(queries, timeout=self.fed.round_timeout) if queries else []:
            node = reply.metadata.src_node_id
            metrics = None if reply.has_error() else reply.content.get(P.METRICS)
            missing = [k for k in (P.ADAPTER_RANK, P.PARTITION_ID) if metrics is None or k not in metrics]
            if missing:
                reason = reply.error.reason if reply.has_error() else f"the reply has no {', '.join(missing)}"
                self.round_log.failures.append({"node_id": node, "reason": reason, "stage": "query"})
                log.warning("node %d did not say its rank and partition: %s", node, reason)
                continue
            self.node_info[node] = {"rank": int(metrics[P.ADAPTER_RANK]), "partition": int(metrics[P.PARTITION_ID])}
        return [n for n in nodes if n in self.node_info]

    def known_ranks(self, grid: Grid, nodes: list[int], server_round: int) -> list[int]:
        """With heterogeneous ranks, the nodes whose ``adapter.r`` the server knows and admits
        (nodes not asked before are asked); nodes that do not answer sit this round out."""
        if not self.fed.heterogeneous_ranks:
            return nodes
        admitted = []
        for node in self.ask_nodes(grid, nodes, server_round):
            rank = self.node_info[node]["rank"]
            if rank > self.rank and not self.rule.admits_larger_ranks:
                reason = (f"adapter rank {rank} is above the global rank {self.rank}: federation.strategy="
                          f"{self.fed.strategy} pads to the global rank, so the node would train components "
                          f"that never move; left out of the federation")
                self.round_log.failures.append({"node_id": node, "reason": reason, "stage": "query"})
                log.warning("node %d: %s", node, reason)
                continue
            if node not in self.node_ranks:
                log.info("node %d trains adapter rank %d (global %d)", node, rank, self.rank)
            self.node_ranks[node] = rank
            admitted.append(node)
        return admitted

    def sample_nodes(self, grid: Grid, server_round: int, fraction: float, min_nodes: int) -> list[int]:
        """``fraction`` of the connected nodes (at least ``min_nodes``), drawn from a generator
        seeded by ``train.seed`` and the round. A subset is drawn over the nodes ordered by
        partition id (each node is asked for it once): node ids differ between runs, partitions
        do not, so runs that share a seed train and evaluate the same partitions in each round
        whatever their strategy, and their paired differences leave the draw out."""
        wanted = max(self.fed.min_available_nodes, min_nodes)
        deadline = time.monotonic() + self.fed.round_timeout
        while len(nodes := sorted(grid.get_node_ids())) < wanted:
            if time.monotonic() > deadline:
                raise TimeoutError(f"round {server_round}: only {len(nodes)} nodes connected after "
                                   f"{self.fed.round_timeout:.0f} s, {wanted} needed (federation.min-available-nodes)")
            log.info("waiting for nodes: %d connected, %d needed", len(nodes), wanted)
            time.sleep(1.0)
        size = min(len(nodes), max(int(len(nodes) * fraction), min_nodes))
        if size < len(nodes):
            nodes = sorted(self.ask_nodes(grid, nodes, server_round), key=lambda n: (self.node_info[n]["partition"], n))
            size = min(size, len(nodes))
        rng = random.Random(self.cfg.train.seed * 100_003 + server_round)  # reproducible sampling
        return sorted(rng.sample(nodes, size))


def _weighted_metrics(updates: list[ClientUpdate]) -> dict[str, float]:
    """Example-weighted means of the clients' scalar training metrics (NaN entries skipped)."""
    out: dict[str, float] = {P.NUM_EXAMPLES: float(sum(u.num_examples for u in updates))}
    for key in sorted({k for u in updates for k in u.metrics}):
        pairs = [(u.metrics[key], u.num_examples) for u in updates if np.isfinite(u.metrics.get(key, np.nan))]
        if pairs:
            values, w = zip(*pairs)
            out[key] = float(np.average(values, weights=w))
    return out
