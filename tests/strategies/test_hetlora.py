"""HetLoRA: norm-weighted average of zero-padded factors, hand-worked."""

import numpy as np
import pytest

from fedgate import strategies
from fedgate.aggregation.server_opt import server_optimizer
from fedgate.aggregation.update import ClientUpdate
from fedgate.strategies.hetlora import norm_weights


def test_norm_weights_by_hand():
    locals_ = [{"m.lora_A": np.array([[1.0]]), "m.lora_B": np.array([[2.0]])},
               {"m.lora_A": np.array([[1.0]]), "m.lora_B": np.array([[0.5]])}]
    assert norm_weights(locals_, [1.0, 3.0]) == [{"*": 1.0, "m": 2.0}, {"*": 3.0, "m": 1.5}]


def test_clients_whose_adapter_does_more_count_more(tiny_cfg):
    """Global B = A = 1. Client 0 ends at B = 2 (|BA| = 2), client 1 at B = 0.5 (|BA| = 0.5):
    weights 0.8 and 0.2, so B = 1 + 0.8 * 1 + 0.2 * (-0.5) = 1.7; the head is the plain mean."""
    cfg = tiny_cfg(**{"federation.strategy": "hetlora", "federation.weighting": "uniform"})
    glob = {"m.lora_A": np.array([[1.0]]), "m.lora_B": np.array([[1.0]]), "head.w": np.array([0.0])}
    deltas = [{"m.lora_A": np.array([[0.0]]), "m.lora_B": np.array([[1.0]]), "head.w": np.array([1.0])},
              {"m.lora_A": np.array([[0.0]]), "m.lora_B": np.array([[-0.5]]), "head.w": np.array([3.0])}]
    rule = strategies.create(cfg.federation)
    out = rule.aggregate(glob, [ClientUpdate(i, d, 10) for i, d in enumerate(deltas)], server_optimizer("sgd", 1.0),
                         {}, strategies.RoundInputs(sent=[glob, glob], rank=1))
    assert out.params["m.lora_B"][0, 0] == pytest.approx(1.7)
    assert out.params["m.lora_A"][0, 0] == pytest.approx(1.0)
    assert out.params["head.w"][0] == pytest.approx(2.0)
    assert out.info["norm_weight_share"] == [0.8, 0.2]


def test_hetlora_refuses_a_global_rank_below_a_client_rank_and_central_dp(tiny_cfg):
    with pytest.raises(ValueError, match="at least the largest"):
        strategies.check(tiny_cfg(**{"federation.strategy": "hetlora", "federation.heterogeneous-ranks": True,
                                     "federation.client-ranks": "4,16", "adapter.r": 8}))
    with pytest.raises(ValueError, match="federation.dp=central"):
        strategies.check(tiny_cfg(**{"federation.strategy": "hetlora", "federation.dp": "central",
                                     "federation.clip-norm": 1.0, "federation.dp-noise": 1.0}))
