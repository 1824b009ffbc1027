"""RoLoRA: B alone in odd rounds, A alone in even rounds, and the product of the averaged
factor is the average of the clients' products."""

import numpy as np
import pytest

from fedgate import strategies
from fedgate.aggregation.server_opt import server_optimizer
from fedgate.aggregation.update import ClientUpdate
from fedgate.federated.client import ClientTask, clear_cache
from fedgate.federated.client_rules import shared_keys
from fedgate.state import adapter_state, to_numpy

KEYS = ["m.lora_A", "m.lora_B", "m.gate_bias", "head.bias"]


def test_the_factor_that_travels_alternates(tiny_cfg):
    cfg = tiny_cfg(**{"federation.strategy": "rolora"})
    assert shared_keys(KEYS, cfg, server_round=1) == ["m.lora_B", "m.gate_bias", "head.bias"]
    assert shared_keys(KEYS, cfg, server_round=2) == ["m.lora_A", "m.gate_bias", "head.bias"]
    assert shared_keys(KEYS, cfg, server_round=3) == ["m.lora_B", "m.gate_bias", "head.bias"]
    assert shared_keys(KEYS, cfg) == KEYS  # outside a training round: the whole adapter


def test_averaging_one_factor_averages_the_products_by_hand(tiny_cfg):
    """A fixed at [[1, 2]]; clients move B (2x1) to [[1], [0]] and [[3], [2]] from 0: the mean B
    [[2], [1]] times A equals the mean of the two products."""
    cfg = tiny_cfg(**{"federation.strategy": "rolora", "federation.weighting": "uniform"})
    glob = {"m.lora_A": np.array([[1.0, 2.0]]), "m.lora_B": np.zeros((2, 1))}
    ends = [np.array([[1.0], [0.0]]), np.array([[3.0], [2.0]])]
    updates = [ClientUpdate(i, {"m.lora_B": b}, 10) for i, b in enumerate(ends)]
    out = strategies.create(cfg.federation).aggregate(glob, updates, server_optimizer("sgd", 1.0), {},
                                                      strategies.RoundInputs(rank=1))
    np.testing.assert_allclose(out.params["m.lora_B"], [[2.0], [1.0]])
    np.testing.assert_array_equal(out.params["m.lora_A"], glob["m.lora_A"])
    mean_product = np.mean([b @ glob["m.lora_A"] for b in ends], axis=0)
    np.testing.assert_allclose(out.params["m.lora_B"] @ out.params["m.lora_A"], mean_product)


def test_a_client_trains_only_the_factor_of_the_round(tiny_cfg):
    clear_cache()
    cfg = tiny_cfg(**{"federation.strategy": "rolora", "train.max-steps": 2})
    task = ClientTask(cfg, 0, 2)
    full = to_numpy(adapter_state(task.model))
    for server_round, moves, stays in ((1, ".lora_B", ".lora_A"), (2, ".lora_A", ".lora_B")):
        sent = {k: full[k] for k in shared_keys(full, cfg, server_round=server_round)}
        update = task.train(sent, server_round=server_round)
        assert not any(k.endswith(stays) for k in update.delta)
        assert any(k.endswith(moves) and np.abs(v).max() > 0 for k, v in update.delta.items())
        full = {**full, **{k: full[k] + update.delta[k] for k in update.delta}}  # round 2's A learns through it
    with pytest.raises(KeyError, match="different set of tensors"):
        task.train({k: full[k] for k in shared_keys(full, cfg, server_round=1)}, server_round=2)


def test_rolora_refuses_heterogeneous_ranks(tiny_cfg):
    with pytest.raises(ValueError, match="refuses federation.heterogeneous-ranks"):
        strategies.check(tiny_cfg(**{"federation.strategy": "rolora", "federation.heterogeneous-ranks": True}))
