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


def test_both_factors_go_down_and_the_trained_one_comes_back(tiny_cfg):
    cfg = tiny_cfg(**{"federation.strategy": "rolora"})
    rule = strategies.get("rolora")
    for server_round in (0, 1, 2, 3):
        assert shared_keys(KEYS, cfg, server_round=server_round) == KEYS  # no client trains against a stale factor
    assert [k for k in KEYS if rule.returns(k, 1)] == ["m.lora_B", "m.gate_bias", "head.bias"]
    assert [k for k in KEYS if rule.returns(k, 2)] == ["m.lora_A", "m.gate_bias", "head.bias"]
    assert [k for k in KEYS if rule.returns(k, 0)] == KEYS


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


def test_a_client_trains_only_the_factor_of_the_round_from_the_global_frozen_one(tiny_cfg):
    """Two clients share one cached model: in round 2 client 0 must train A against the global
    B the server sent, not against the B client 1 left in the model in round 1."""
    clear_cache()
    cfg = tiny_cfg(**{"federation.strategy": "rolora", "train.max-steps": 2})
    first, other = ClientTask(cfg, 0, 2), ClientTask(cfg, 1, 2)
    assert first.model is other.model
    full = to_numpy(adapter_state(first.model))
    glob = {k: full[k] for k in shared_keys(full, cfg, server_round=1)}
    updates = [task.train(glob, server_round=1) for task in (first, other)]
    for update in updates:
        assert not any(k.endswith(".lora_A") for k in update.delta)
        assert any(k.endswith(".lora_B") and np.abs(v).max() > 0 for k, v in update.delta.items())
    # the server's average of round 1, sent in round 2 with both factors
    mean = {k: glob[k] + (updates[0].delta[k] + updates[1].delta[k]) / 2 if k in updates[0].delta else glob[k]
            for k in glob}
    again = first.train(mean, server_round=2)
    assert not any(k.endswith(".lora_B") for k in again.delta)
    assert any(k.endswith(".lora_A") and np.abs(v).max() > 0 for k, v in again.delta.items())
    after = to_numpy(adapter_state(first.model))
    for k in mean:
        if k.endswith(".lora_B"):
            np.testing.assert_array_equal(after[k], mean[k])  # trained against the global B, which stayed frozen


def test_rolora_refuses_heterogeneous_ranks(tiny_cfg):
    with pytest.raises(ValueError, match="refuses federation.heterogeneous-ranks"):
        strategies.check(tiny_cfg(**{"federation.strategy": "rolora", "federation.heterogeneous-ranks": True}))
