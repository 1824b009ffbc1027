"""Names of the records in fedgate's Flower messages: the one place both sides spell them.

Down (server -> client), train and evaluate messages:
    ARRAYS       ArrayRecord, the shared global tensors (adapters, gates, head; not what the
                 strategy keeps off the wire: pruned adapters, A under ffa, personal gates),
                 at the client's own adapter rank with heterogeneous ranks
    CONFIG       ConfigRecord, ``server-round``, PRUNED (comma-separated adapter names)
    GATE_PRIOR   ConfigRecord {adapter module name: prior mean token gate} (train only)
    the strategy's own ArrayRecords, named by it (``Strategy.downlink_records``: SCAFFOLD's c)
Up (client -> server), train replies:
    ARRAYS       ArrayRecord, ``local - global`` for every tensor of ARRAYS
    METRICS      MetricRecord, NUM_EXAMPLES plus training metrics
    GATE_TOKEN   MetricRecord {adapter module name: mean token gate over local training}
    GATE_STRUCT  MetricRecord {adapter module name: structural gate sigmoid(alpha_l)}
    the strategy's own ArrayRecords (``Strategy.uplink_records``: SCAFFOLD's c_i+ - c_i)
Evaluate replies carry METRICS only. Query messages carry CONFIG with ASK:
    ASK_NODE        (heterogeneous ranks, or sampling a subset of the nodes) the client's
                    ADAPTER_RANK and PARTITION_ID, answered in METRICS; asked once per node
    ASK_HEAD_STATS  (before round 1, ``train.head-init = ridge``; after every round too with
                    ``federation.head-refit``) the ridge sufficient statistics of the
                    client's training rows under ARRAYS (PRUNED adapters off), answered as
                    HEAD_STATS (ArrayRecord {GRAM, MOMENT}) plus NUM_EXAMPLES in METRICS
A client's own state across rounds (Flower's ``context.state``): its strategy's records
(``Strategy.client_records``: SCAFFOLD's c_i), STATE_PERSONAL (its personal structural gate
logits), STATE_COUNTS (rounds trained, which the reply's ``rounds-trained`` metric reports:
proof that the state survives between rounds).
"""

from __future__ import annotations

from typing import Mapping

# the keys of one adapter's gate statistics, defined with the math on them
from fedgate.aggregation.gates import STRUCTURAL_GATE, TOKEN_GATE

ARRAYS = "arrays"
CONFIG = "config"
GATE_PRIOR = "gate-prior"
METRICS = "metrics"
GATE_TOKEN = "gate-token"
GATE_STRUCT = "gate-structural"

STATE_PERSONAL = "personal-gates"
STATE_COUNTS = "counts"

ASK = "ask"
ASK_NODE = "node"
ASK_HEAD_STATS = "head-stats"
HEAD_STATS = "head-stats"
GRAM = "gram"
MOMENT = "moment"

NUM_EXAMPLES = "num-examples"
PRUNED = "pruned"
ADAPTER_RANK = "adapter-r"
SERVER_ROUND = "server-round"
PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"



def split_gate_stats(stats: Mapping[str, Mapping[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """``{module: {token_gate, structural_gate}}`` -> the two flat records a reply carries."""
    token = {name: float(s[TOKEN_GATE]) for name, s in stats.items()}
    structural = {name: float(s[STRUCTURAL_GATE]) for name, s in stats.items()}
    return token, structural


def join_gate_stats(token: Mapping[str, float], structural: Mapping[str, float], *,
                    sender: str = "reply") -> dict[str, dict[str, float]]:
    """The inverse of :func:`split_gate_stats`; both records must name the same adapters."""
    if set(token) != set(structural):
        only = sorted(set(token) ^ set(structural))
        raise ValueError(f"{sender}: token and structural gate records name different adapters: {only[:5]}")
    return {name: {TOKEN_GATE: float(token[name]), STRUCTURAL_GATE: float(structural[name])} for name in token}
