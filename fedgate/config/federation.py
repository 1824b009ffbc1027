"""How rounds run (``[federation]``): sampling and timeouts, the strategy and its settings
(server optimizer, clipping, robust rules, heterogeneous ranks), gates and pruning,
client-level DP. How the clients' data is split is ``[shards]`` (shards.py)."""

from __future__ import annotations

from dataclasses import dataclass

from fedgate.config.rules import check_private
from fedgate.config.values import choice, positive

HEAD_REFIT = ("off", "final", "every-round")


@dataclass(frozen=True)
class FederationConfig:
    """How rounds run: sampling, aggregation, the gate prior, privacy."""

    rounds: int = 4
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    min_train_nodes: int = 2
    min_evaluate_nodes: int = 2
    min_available_nodes: int = 2
    round_timeout: float = 3600.0  # seconds the server waits for the replies of one round
    max_idle_rounds: int = 3  # stop the run (failed) after this many rounds in a row without an update; 0 = never
    strategy: str = "fedavg"  # a name from fedgate/strategies/ (checked there: fedgate.strategies.check)
    weighting: str = "examples"  # examples | uniform | gates: per layer, examples x the client's mean gate there
    server_lr: float = 0.0  # server optimizer step size; 0 = the strategy's default (1.0, adaptive 0.01)
    server_momentum: float = 0.9  # fedavgm
    server_beta1: float = 0.9  # fedadagrad / fedadam / fedyogi
    server_beta2: float = 0.99  # fedadam / fedyogi
    server_tau: float = 1e-3  # adaptivity floor of fedadagrad / fedadam / fedyogi
    clip_norm: float = 0.0  # scale each client update to at most this L2 norm before combining; 0 = off
    trim_fraction: float = 0.2  # trimmed-mean: share of clients dropped at each end, per coordinate
    byzantine_clients: int = 1  # krum, validated: updates per round assumed malicious (f); the K - f best are kept
    max_update_norm: float = 1000.0  # validation: reject an update whose L2 norm is larger; 0 = no bound
    prune_threshold: float = 0.0  # prune an insertion point whose global structural gate stays below; 0 = off
    prune_patience: int = 2  # ... for this many consecutive rounds
    prune_max_share: float = 1.0  # never prune more than this share of the insertion points (lowest gates first)
    personal_gates: bool = False  # structural gates stay with each client (shared adapters, personal routing)
    heterogeneous_ranks: bool = False  # clients may train their own adapter.r (node config); server asks
    client_ranks: tuple[int, ...] = ()  # simulations: adapter.r of shard i is client_ranks[i % len]
    gate_prior: str = "global"  # global: last round's aggregated gate profile | fixed: loss.gate-prior
    head_refit: str = "off"  # refit the head from the clients' ridge statistics: off | final | every-round
    # client-level differential privacy (fedgate/aggregation/privacy.py): off | central | local
    dp: str = "off"
    dp_noise: float = 0.0  # noise multiplier sigma (noise std = sigma * clip-norm); or give dp-epsilon
    dp_epsilon: float = 0.0  # target epsilon after federation.rounds rounds; sigma is solved for it
    dp_delta: float = 1e-5
    dp_seeded: bool = False  # noise from train.seed (studies that rerun exactly) instead of the OS's entropy

    def __post_init__(self) -> None:
        positive("federation.rounds", self.rounds)
        for key, v in (("fraction-train", self.fraction_train), ("fraction-evaluate", self.fraction_evaluate)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"federation.{key} must be in [0, 1], got {v}")
        for key, v in (("min-train-nodes", self.min_train_nodes), ("min-evaluate-nodes", self.min_evaluate_nodes),
                       ("min-available-nodes", self.min_available_nodes), ("max-idle-rounds", self.max_idle_rounds)):
            if v < 0:
                raise ValueError(f"federation.{key} must be >= 0, got {v}")
        if not self.round_timeout > 0:
            raise ValueError(f"federation.round-timeout must be > 0 seconds, got {self.round_timeout}")
        if self.server_lr < 0:
            raise ValueError(f"federation.server-lr must be > 0 (0 = the strategy's default), got {self.server_lr}")
        for key, v in (("server-momentum", self.server_momentum), ("server-beta1", self.server_beta1),
                       ("server-beta2", self.server_beta2)):
            if not 0.0 <= v < 1.0:
                raise ValueError(f"federation.{key} must be in [0, 1), got {v}")
        if self.byzantine_clients < 0:
            raise ValueError(f"federation.byzantine-clients must be >= 0, got {self.byzantine_clients}")
        if not 0.0 <= self.trim_fraction < 0.5:
            raise ValueError(f"federation.trim-fraction must be in [0, 0.5), got {self.trim_fraction}")
        if not self.server_tau > 0:
            raise ValueError(f"federation.server-tau must be > 0, got {self.server_tau}")
        for key, v in (("clip-norm", self.clip_norm), ("max-update-norm", self.max_update_norm)):
            if v < 0:
                raise ValueError(f"federation.{key} must be >= 0 (0 = off), got {v}")
        if not 0.0 <= self.prune_threshold < 1.0:
            raise ValueError(f"federation.prune-threshold must be in [0, 1) (0 = no pruning), got {self.prune_threshold}")
        positive("federation.prune-patience", self.prune_patience)
        if not 0.0 < self.prune_max_share <= 1.0:
            raise ValueError(f"federation.prune-max-share must be in (0, 1], got {self.prune_max_share}")
        if any(r < 1 for r in self.client_ranks):
            raise ValueError(f"federation.client-ranks must all be >= 1, got {self.client_ranks}")
        if self.client_ranks and not self.heterogeneous_ranks:
            raise ValueError("federation.client-ranks needs federation.heterogeneous-ranks=true")
        choice("federation.gate-prior", self.gate_prior, ("global", "fixed"))
        choice("federation.head-refit", self.head_refit, HEAD_REFIT)
        choice("federation.weighting", self.weighting, ("examples", "uniform", "gates"))
        choice("federation.dp", self.dp, ("off", "central", "local"))
        if self.dp != "off":
            check_private(self)

    def noise_multiplier(self, sample_rate: float | None = None) -> float:
        """sigma: ``dp-noise``, or the smallest that keeps ``dp-epsilon`` after all rounds at
        ``sample_rate`` (central DP: the rate the server samples at; default fraction-train)."""
        if self.dp == "off":
            return 0.0
        if self.dp_noise > 0:
            return self.dp_noise
        from fedgate.aggregation.privacy import noise_for_epsilon

        rate = self.fraction_train if sample_rate is None else sample_rate
        return noise_for_epsilon(self.dp, self.dp_epsilon, rate, self.rounds, self.dp_delta)
