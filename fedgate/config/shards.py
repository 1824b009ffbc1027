"""How the simulated clients' data is split and spoiled (``[shards]``): the partitioner
over the training rows, each client's local holdout, conflicting feedback (flipped labels,
flipped clients and their absent reference) and label sparsity. Deployed clients bring their
own data; only ``local-holdout`` applies to them."""

from __future__ import annotations

from dataclasses import dataclass

from fedgate.config.values import choice

PARTITIONERS = ("iid", "dirichlet", "domain", "quantity", "kind")


@dataclass(frozen=True)
class ShardsConfig:
    """Each client's shard of the training rows, and what is done to it."""

    partitioner: str = "dirichlet"  # iid | dirichlet | domain | quantity | kind (degradation-kind skew)
    alpha: float = 0.5  # Dirichlet concentration (dirichlet, quantity): smaller = more skew
    local_holdout: float = 0.1  # share of each client's prompts kept for federated evaluation
    flipped_clients: float = 0.0  # conflicting feedback: share of clients whose training labels are all flipped
    flipped_rows: float = 0.0  # conflicting feedback: share of every client's training rows flipped (v -> 4 - v)
    absent_clients: float = 0.0  # the reference for flipped-clients: the same seeded share of clients holds no rows
    labeled_fraction: float = 1.0  # label sparsity: share of each client's training rows that carry labels

    def __post_init__(self) -> None:
        choice("shards.partitioner", self.partitioner, PARTITIONERS)
        if not self.alpha > 0:
            raise ValueError(f"shards.alpha must be > 0, got {self.alpha}")
        if not 0.0 < self.local_holdout < 1.0:
            raise ValueError(f"shards.local-holdout must be in (0, 1), got {self.local_holdout}")
        for key, v in (("flipped-clients", self.flipped_clients), ("flipped-rows", self.flipped_rows),
                       ("absent-clients", self.absent_clients)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"shards.{key} must be in [0, 1], got {v}")
        if not 0.0 < self.labeled_fraction <= 1.0:
            raise ValueError(f"shards.labeled-fraction must be in (0, 1], got {self.labeled_fraction}")
