"""The federated reward head: exact ridge regression from the clients' summed statistics.

Before round 1 the server asks the clients of a sampled round for the ridge sufficient
statistics of their training rows under the initial global state (fedgate/ridge.py), adds
them up, and solves for the head with the regularisation chosen on its validation rows.
The result equals the ridge head fitted on the pooled rows, so the federation starts where
a linear probe on frozen features does instead of at chance. On preference pairs the
statistics are those of each pair's feature difference regressed on +1 (a least-squares
Bradley-Terry head), the penalty chosen by validation pairwise accuracy. What it costs on the wire is
logged: one (d+1)^2 gram matrix per client, once.

With ``federation.head-refit=every-round`` the server asks again after every round's
aggregation, under the new global adapters, and replaces the averaged head with the fit: the
head stays the pooled-rows ridge solution for the features the adapters now produce
(``final``: only after the last round). This matters when clients' labels are skewed: a
client that holds almost only aligned (or only misaligned) rows trains its copy of the head
toward its own label mix, and the average of such heads is not the pooled rows' head, while
the sum of their statistics gives exactly that. Each refit costs what round 0's fit costs:
a forward pass over every sampled client's training rows, and a (d+1)^2 gram matrix per
client on the uplink, several times the adapters' own bytes for MiniLM's pooled features.

Under ``federation.strategy=validated`` the head is screened the way that rule screens
updates: each client's statistics alone give a head, scored on the server's validation rows,
and up to ``federation.byzantine-clients`` clients whose head ranks those rows worse than
chance (ROC-AUC or pairwise accuracy below 0.5: labels that contradict the server's) are
left out of the sum. When no client scores below chance, as in a clean federation, the head
is exactly the unscreened one; round 0's ``head_init`` logs every client's score and who was
left out.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedgate import strategies
from fedgate.federated import protocol as P
from fedgate.federated.evaluator import ServerEvaluator
from fedgate.model import ALIGNMENT, NUM_OUTPUTS
from fedgate.ridge import RidgeStats, fit, fit_pairs, sum_stats
from server.messages import from_record, to_record, wire_bytes
from server.strategy import FedgateStrategy

log = logging.getLogger(__name__)


def _parse(reply: Message) -> RidgeStats:
    arrays = from_record(reply.content[P.HEAD_STATS])
    gram, moment = arrays[P.GRAM], arrays[P.MOMENT]
    count = int(reply.content[P.METRICS][P.NUM_EXAMPLES])
    d = gram.shape[0] if gram.ndim else 0
    square = gram.ndim == 2 and gram.shape == (d, d) and moment.ndim == 2 and moment.shape[0] == d
    if count <= 0 or not square or not (np.isfinite(gram).all() and np.isfinite(moment).all()):
        raise ValueError(f"malformed head statistics: gram {gram.shape}, moment {moment.shape}, {count} rows")
    return RidgeStats(gram.astype(np.float64), moment.astype(np.float64), count)


CHANCE = 0.5  # ROC-AUC and pairwise accuracy of a head that ranks at random


def screened(scores: list[float], budget: int) -> list[int]:
    """Indices of the clients to leave out: at most ``budget``, the lowest scores first, and
    only those below chance."""
    below = sorted((s, i) for i, s in enumerate(scores) if s < CHANCE)
    return sorted(i for _, i in below[:max(0, budget)])


def federated_head(grid: Grid, strategy: FedgateStrategy, evaluator: ServerEvaluator,
                   server_round: int = 0) -> dict:
    """Fit the global head from the sampled clients' statistics under the current global
    adapters; updates ``strategy.global_state`` in place and returns what happened (for the
    round's record: round 0's ``head_init``, a later round's ``head_refit``)."""
    cfg = strategy.cfg
    t0 = time.perf_counter()
    nodes = strategy.sample_nodes(grid, server_round, cfg.federation.fraction_train or 1.0,
                                  cfg.federation.min_train_nodes)
    nodes = strategy.known_ranks(grid, nodes, server_round)  # heterogeneous ranks: each node gets its rank's state
    config = ConfigRecord({P.ASK: P.ASK_HEAD_STATS, P.SERVER_ROUND: server_round,
                           P.PRUNED: ",".join(strategy.pruned)})
    queries = [Message(RecordDict({P.CONFIG: config, P.ARRAYS: to_record(strategy.state_for(n))}),
                       message_type=MessageType.QUERY, dst_node_id=n) for n in nodes]
    down = sum(wire_bytes(q.content) for q in queries)
    parts, senders, up, failures = [], [], 0, []
    for reply in grid.send_and_receive(queries, timeout=cfg.federation.round_timeout):
        node = reply.metadata.src_node_id
        try:
            if reply.has_error():
                raise ValueError(reply.error.reason or "no reason given")
            up += wire_bytes(reply.content)
            parts.append(_parse(reply))
            senders.append(node)
        except (KeyError, ValueError, TypeError) as e:
            reason = (str(e).strip().splitlines() or ["?"])[-1]
            failures.append({"node_id": node, "reason": reason})
            log.warning("head statistics of node %d unusable: %s", node, reason)
    info = {"clients": len(parts), "rows": sum(p.count for p in parts), "failures": failures,
            "bytes_down": down, "bytes_up": up}
    if not parts:
        log.warning("no client sent head statistics: %s", "the head starts at zero" if server_round == 0
                    else "the head stays the clients' average this round")
        return {**info, "fitted": False}
    x_val, y_val = evaluator.validation_features(strategy.global_state, strategy.pruned)
    if evaluator.pairs:  # the least-squares Bradley-Terry head, chosen by validation pairwise accuracy
        def fitted(stats: RidgeStats) -> tuple[np.ndarray, float, float]:
            return fit_pairs(stats, x_val, NUM_OUTPUTS, ALIGNMENT)
        metric, what = "validation_pairwise_accuracy", "pairs"
    else:
        def fitted(stats: RidgeStats) -> tuple[np.ndarray, float, float]:
            return fit(stats, x_val, y_val, cfg.data.misaligned_threshold)
        metric, what = "validation_auc", "rows"
    if strategies.get(cfg.federation.strategy).scores_updates and len(parts) > 1:
        scores = [fitted(part)[2] for part in parts]
        out = screened(scores, min(cfg.federation.byzantine_clients, len(parts) - 1))
        info["client_" + metric] = dict(zip(map(str, senders), map(float, scores)))
        info["excluded"] = [int(senders[i]) for i in out]
        if out:
            log.warning("head statistics of node(s) %s left out: their own head scores %s on validation, "
                        "below chance", info["excluded"], ", ".join(f"{scores[i]:.3f}" for i in out))
        parts = [part for i, part in enumerate(parts) if i not in out]
        info.update(clients=len(parts), rows=sum(p.count for p in parts))
    w, lam, score = fitted(sum_stats(parts))
    strategy.global_state["head.weight"] = w[:-1].T.astype(strategy.global_state["head.weight"].dtype)
    strategy.global_state["head.bias"] = w[-1].astype(strategy.global_state["head.bias"].dtype)
    info.update({"fitted": True, "ridge_lambda": lam, metric: score, "wall_s": time.perf_counter() - t0})
    log.info("federated ridge head from %d clients (%d %s): lambda %g, %s %.4f, %.1f MiB up",
             len(parts), info["rows"], what, lam, metric.replace("_", " "), score, up / 2**20)
    return info
