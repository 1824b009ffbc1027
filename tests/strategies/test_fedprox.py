"""FedProx's client side: the proximal term by hand, and a local round that stays closer to
the global model."""

import numpy as np
import pytest
import torch

from fedgate.federated.client import ClientTask, clear_cache
from fedgate.model import build_reward_model
from fedgate.state import adapter_state, to_numpy
from fedgate.strategies.fedprox import proximal_term


def test_proximal_term_by_hand(tiny_cfg):
    cfg = tiny_cfg()
    model, _ = build_reward_model(cfg.model, cfg.adapter)
    start = {k: v.clone() for k, v in adapter_state(model).items()}
    with torch.no_grad():
        model.head.bias.add_(1.0)  # 6 entries (5 attributes, the alignment logit), each 1 away
    assert float(proximal_term(model, start, mu=0.2)()) == pytest.approx(0.5 * 0.2 * 6)


def test_fedprox_keeps_the_client_closer_to_the_global_model(tiny_cfg):
    norms = {}
    for strategy, mu in (("fedavg", 0.0), ("fedprox", 50.0)):
        clear_cache()
        cfg = tiny_cfg(**{"federation.strategy": strategy, "train.proximal-mu": mu, "train.head-init": "zero"})
        task = ClientTask(cfg, 0, 2)
        glob = to_numpy(adapter_state(task.model))
        update = task.train(glob, server_round=2)
        norms[strategy] = np.sqrt(sum(float((v ** 2).sum()) for v in update.delta.values()))
    assert norms["fedprox"] < 0.9 * norms["fedavg"], norms
