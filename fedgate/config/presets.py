"""Named sizings. The section dataclasses hold one set of defaults, those of centralized
``fedgate train``; a preset is the few values a setting changes on top of them, named
instead of silently different. A run's own keys win over its preset.

``federation-cpu`` is the federation's sizing, which ``[tool.flwr.app.config]`` in
pyproject.toml holds (``preset = "federation-cpu"``; tests/test_config.py checks every
key there against the dataclasses with this preset): 3,200 training rows shared by the
clients, 0.75 of a local epoch per round at a constant learning rate of 5e-3 after warmup,
400 test rows, so that four clients and four rounds finish in about 7 minutes on 2 CPU
cores (docs/learning.md).
"""

from __future__ import annotations

PRESET_KEY = "preset"
PRESETS: dict[str, dict[str, object]] = {
    "federation-cpu": {"data.limit": 3200, "server.eval-limit": 400, "train.epochs": 0.75,
                       "train.lr-adapter": 0.005, "train.schedule": "constant"},
}


def with_preset(flat: dict) -> dict:
    """``flat`` with its preset's values under its own keys (and the preset key removed)."""
    name = flat.get(PRESET_KEY, "")
    rest = {k: v for k, v in flat.items() if k != PRESET_KEY}
    if not name:
        return rest
    if name not in PRESETS:
        raise ValueError(f"{PRESET_KEY} must be one of {tuple(PRESETS)} (or empty), got {name!r}")
    return {**PRESETS[name], **rest}
