"""What a round asks of a client's model beyond plain local training, for any strategy.

- Which tensors travel (:func:`shared_keys`): everything trainable, minus what the strategy
  keeps off the wire (``Strategy.shares``: e.g. ``lora_A`` under ``ffa``), minus
  ``struct_logit`` with personal gates (routing stays local), minus every tensor of a pruned
  insertion point.
- :func:`configure_adapters` puts a (possibly cached, shared) model into the state a round
  asks for: pruned adapters switched off and frozen, then the strategy's own setup
  (``Strategy.freezes`` / ``Strategy.prepare_adapter``: e.g. A frozen and re-drawn under ``ffa``).
"""

from __future__ import annotations

from typing import Collection, Iterable

import torch

from fedgate import strategies
from fedgate.aggregation.lora import module_of
from fedgate.config import FedgateConfig
from fedgate.inject import adapter_modules
from fedgate.model import RewardModel


def shared_keys(keys: Iterable[str], cfg: FedgateConfig, pruned: Collection[str] = (),
                server_round: int = 0) -> list[str]:
    """The state keys that go back and forth in training round ``server_round`` (0: outside
    a training round), in the given order."""
    rule = strategies.get(cfg.federation.strategy)
    personal = cfg.federation.personal_gates
    return [k for k in keys if module_of(k) not in pruned and rule.shares(k, server_round)
            and not (personal and k.endswith(".struct_logit"))]


@torch.no_grad()
def configure_adapters(model: RewardModel, cfg: FedgateConfig, pruned: Collection[str] = (),
                       server_round: int = 0) -> None:
    """Switch pruned adapters off (and freeze them), then apply the strategy's own setup.
    Resets every other adapter to trainable, so a cached model serves any round."""
    rule = strategies.get(cfg.federation.strategy)
    for name, m in adapter_modules(model).items():
        off = name in pruned
        m.enabled = not off
        for pname in m.adapter_names:
            frozen = pname in m.frozen_param_names or rule.freezes(pname, server_round)
            getattr(m, pname).requires_grad_(not off and not frozen)
        rule.prepare_adapter(name, m, cfg)
