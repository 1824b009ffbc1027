"""What the server receives from one client in one round, free of any Flower type."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ClientUpdate:
    node_id: int
    delta: dict[str, np.ndarray]  # local - global, per trainable tensor
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    gate_stats: dict[str, dict[str, float]] = field(default_factory=dict)  # module -> {token_gate, structural_gate}
