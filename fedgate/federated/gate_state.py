"""What the server keeps of the gates between rounds: the global gate profile (whose mean
token gates are the next round's KL prior), how many rounds in a row each insertion
point's structural gate has stayed below ``federation.prune-threshold``, and the adapters
pruned for it (off, not trained, not sent from then on)."""

from __future__ import annotations

import logging
import math
from typing import Mapping, Sequence

import numpy as np

from fedgate.aggregation import gate_profile, prior_from_profile
from fedgate.aggregation.gates import STRUCTURAL_GATE, below_threshold_streaks, newly_pruned

log = logging.getLogger(__name__)


class GateState:
    def __init__(self, fed, profile: dict[str, dict[str, float]] | None = None) -> None:
        """``fed``: the run's FederationConfig; ``profile``: a resumed run's last profile."""
        self.fed = fed
        self.profile: dict[str, dict[str, float]] = profile or {}
        self.pruned: list[str] = []
        self.streaks: dict[str, int] = {}

    def prior(self) -> dict[str, float]:
        """The gate prior sent with the next train message: the profile's mean token gates
        (``federation.gate-prior = global``), or nothing so that clients use the fixed
        ``loss.gate-prior``."""
        return prior_from_profile(self.profile) if self.fed.gate_prior == "global" else {}

    def update(self, stats: Sequence[Mapping[str, Mapping[str, float]]], examples: Sequence[int],
               global_state: dict[str, np.ndarray], server_round: int) -> list[str]:
        """A round's client gate statistics in: the new profile, the server's own structural
        gates under personal gates, and pruning; returns the adapters pruned this round."""
        stats = [{m: s for m, s in one.items() if m not in self.pruned} for one in stats]
        if not any(stats):
            return []
        self.profile = gate_profile(stats, examples)
        if self.fed.personal_gates:  # the server's own copy routes like the federation's mean client
            for module, values in self.profile.items():
                key = f"{module}.struct_logit"
                if key in global_state and STRUCTURAL_GATE in values:
                    s = float(np.clip(values[STRUCTURAL_GATE], 1e-6, 1 - 1e-6))
                    global_state[key] = np.full_like(global_state[key], np.log(s / (1 - s)))
        if not self.fed.prune_threshold > 0:
            return []
        self.streaks = below_threshold_streaks(self.streaks, self.profile, self.fed.prune_threshold)
        limit, gates = None, None
        if self.fed.prune_max_share < 1.0:  # room left under the cap, lowest gates first
            points = len(set(self.profile) | set(self.pruned))  # insertion points with a structural gate
            limit = math.floor(self.fed.prune_max_share * points + 1e-9) - len(self.pruned)
            gates = {m: v[STRUCTURAL_GATE] for m, v in self.profile.items() if STRUCTURAL_GATE in v}
        new = newly_pruned(self.streaks, self.fed.prune_patience, self.pruned, limit=limit, gates=gates)
        if new:
            self.pruned = sorted(self.pruned + new)
            log.info("round %d: pruned %d adapter(s) whose structural gate stayed below %g for %d rounds: %s",
                     server_round, len(new), self.fed.prune_threshold, self.fed.prune_patience, new)
        return new

    def saved(self) -> dict:
        return {"pruned": self.pruned, "streaks": self.streaks}

    def load(self, meta: Mapping) -> None:
        self.pruned = list(meta.get("pruned", []))
        self.streaks = {k: int(v) for k, v in meta.get("streaks", {}).items()}
