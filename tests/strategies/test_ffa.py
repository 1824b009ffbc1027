"""FFA-LoRA's client side: every party draws the same A from the shared seed and freezes it."""

import numpy as np
import torch

from fedgate.federated.client_rules import configure_adapters
from fedgate.inject import adapter_modules
from fedgate.model import build_reward_model


def test_ffa_draws_the_same_a_everywhere_and_freezes_it(tiny_cfg):
    cfg = tiny_cfg(**{"federation.strategy": "ffa"})
    a = []
    for seed in (1, 2):  # two processes that built their models differently
        torch.manual_seed(seed)
        model, _ = build_reward_model(cfg.model, cfg.adapter)
        configure_adapters(model, cfg)
        a.append({n: m.lora_A.detach().clone() for n, m in adapter_modules(model).items()})
        assert all(not m.lora_A.requires_grad and m.lora_B.requires_grad for m in adapter_modules(model).values())
    for name in a[0]:
        torch.testing.assert_close(a[0][name], a[1][name], rtol=0, atol=0)
    first = next(iter(a[0].values()))
    assert first.abs().max() <= 1.0 / np.sqrt(first.shape[1])  # nn.Linear's init bound
