"""What one round sent, received, rejected and decided, as the server's strategy records it;
server/federation.py writes it into the round's ``rounds.jsonl`` record."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RoundLog:
    round: int = 0
    num_nodes: int = 0  # nodes connected when the round sampled
    train_nodes: list[int] = field(default_factory=list)
    eval_nodes: list[int] = field(default_factory=list)
    clients: list[dict] = field(default_factory=list)  # accepted train replies: node id, examples, metrics
    eval_clients: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)  # replies not aggregated: node id and reason
    failures: list[dict] = field(default_factory=list)  # nodes that answered with an error
    dropped: list[dict] = field(default_factory=list)  # nodes that did not answer in time
    bytes_down: int = 0  # serialized message sizes
    bytes_up: int = 0
    array_bytes_down: int = 0  # the tensors alone, a strategy's extra arrays included (SCAFFOLD's c)
    array_bytes_up: int = 0
    skipped: str = ""  # why the global state stayed as it was, when it did
    privacy: dict | None = None  # the accountant's record under federation.dp
    # what the strategy's aggregation reported (clip scales, truncation errors, excluded node
    # ids, validation scores, ...) and the adapters pruned after this round
    rule: dict = field(default_factory=dict)
