"""FedEx-LoRA and FLoRA: the global update is exactly the clients' average update, kept partly
in each adapter's dense frozen term; by hand, then with random factors of different ranks."""

import numpy as np
import pytest
import torch
from torch import nn

from fedgate import strategies
from fedgate.adapters import GatedLoRALinear
from fedgate.aggregation.server_opt import server_optimizer
from fedgate.aggregation.update import ClientUpdate
from fedgate.config.model import AdapterSpec
from fedgate.inject import freeze_except
from fedgate.strategies.flora import fresh_a

R = "m.lora_residual"


def rule_for(tiny_cfg, name, **over):
    cfg = tiny_cfg(**{"federation.strategy": name, "adapter.dense-residual": True, "federation.weighting": "uniform",
                      **over})
    return cfg, strategies.create(strategies.check(cfg).federation)


def test_fedex_keeps_what_averaging_the_factors_misses_by_hand(tiny_cfg):
    """Scalars: A = 1, B = 0. Client 0 ends at (A, B) = (2, 1), client 1 at (0, 3). Means:
    A 1, B 2, product 2; mean of products (2 + 0) / 2 = 1; residual s * (1 - 2) = -2 at scaling 2."""
    _, rule = rule_for(tiny_cfg, "fedex-lora")
    glob = {"m.lora_A": np.array([[1.0]]), "m.lora_B": np.array([[0.0]]), R: np.array([[0.5]])}
    deltas = [{"m.lora_A": np.array([[1.0]]), "m.lora_B": np.array([[1.0]])},
              {"m.lora_A": np.array([[-1.0]]), "m.lora_B": np.array([[3.0]])}]
    out = rule.aggregate(glob, [ClientUpdate(i, d, 5) for i, d in enumerate(deltas)], server_optimizer("sgd", 1.0), {},
                         strategies.RoundInputs(sent=[glob, glob], rank=1, scaling=2.0))
    assert out.params["m.lora_A"][0, 0] == pytest.approx(1.0) and out.params["m.lora_B"][0, 0] == pytest.approx(2.0)
    assert out.params[R][0, 0] == pytest.approx(0.5 - 2.0)
    # the global update: 2 * 2 * 1 + (0.5 - 2) = 0.5 + 2 * mean(B_k A_k)
    assert 2.0 * 2.0 * 1.0 + out.params[R][0, 0] == pytest.approx(0.5 + 2.0 * 1.0)
    assert out.info["residual_share"] == pytest.approx(1.0)  # |s (1 - 2)| / |s 1|


def test_flora_merges_the_clients_products_and_restarts_the_adapters_by_hand(tiny_cfg):
    _, rule = rule_for(tiny_cfg, "flora")
    glob = {"m.lora_A": np.array([[1.0]]), "m.lora_B": np.array([[0.0]]), R: np.array([[0.5]])}
    deltas = [{"m.lora_A": np.array([[1.0]]), "m.lora_B": np.array([[1.0]])},
              {"m.lora_A": np.array([[-1.0]]), "m.lora_B": np.array([[3.0]])}]
    out = rule.aggregate(glob, [ClientUpdate(i, d, 5) for i, d in enumerate(deltas)], server_optimizer("sgd", 1.0), {},
                         strategies.RoundInputs(sent=[glob, glob], rank=1, scaling=2.0, server_round=3, seed=7))
    assert out.params[R][0, 0] == pytest.approx(0.5 + 2.0 * 1.0)
    assert out.params["m.lora_B"][0, 0] == 0.0
    np.testing.assert_array_equal(out.params["m.lora_A"], fresh_a("m", (1, 1), 7, 3))
    assert out.info["stacked_bytes"] == 4 * 4  # two clients, one A and one B of one float each


def _clients(ranks, d_in=5, d_out=4, global_rank=8, seed=0):
    rng = np.random.default_rng(seed)
    glob = {"m.lora_A": rng.normal(size=(global_rank, d_in)), "m.lora_B": rng.normal(size=(d_out, global_rank)),
            R: rng.normal(size=(d_out, d_in)), "head.w": rng.normal(size=(3,))}
    return glob, rng


@pytest.mark.parametrize("name", ["fedex-lora", "flora"])
@pytest.mark.parametrize("rank_scaling", ["standard", "rslora"])
def test_the_global_update_is_the_average_of_the_clients_updates_across_ranks(tiny_cfg, name, rank_scaling):
    cfg, rule = rule_for(tiny_cfg, name, **{"federation.heterogeneous-ranks": True, "adapter.r": 8,
                                            "adapter.rank-scaling": rank_scaling})
    spec = cfg.adapter
    glob, rng = _clients([2, 4, 8])
    sent, updates, functions, scales = [], [], [], []
    for node, r in enumerate([2, 4, 8]):
        start = rule.state_at_rank(glob, r, 8, spec.scaling_at(8) / spec.scaling_at(r))
        local = {"m.lora_A": start["m.lora_A"] + rng.normal(size=start["m.lora_A"].shape),
                 "m.lora_B": start["m.lora_B"] + rng.normal(size=start["m.lora_B"].shape)}
        functions.append(glob[R] + spec.scaling_at(r) * local["m.lora_B"] @ local["m.lora_A"])
        updates.append(ClientUpdate(node, {k: local[k] - start[k] for k in local} | {"head.w": np.ones(3)}, 1))
        sent.append(start)
        scales.append(spec.scaling_at(r) / spec.scaling_at(8))
    out = rule.aggregate(glob, updates, server_optimizer("sgd", 1.0), {}, strategies.RoundInputs(
        sent=sent, rank=8, scales=scales, scaling=spec.scaling_at(8), server_round=1))
    got = out.params[R] + spec.scaling_at(8) * out.params["m.lora_B"] @ out.params["m.lora_A"]
    np.testing.assert_allclose(got, np.mean(functions, axis=0), atol=1e-9)
    np.testing.assert_allclose(out.params["head.w"], glob["head.w"] + 1.0)


def test_the_dense_term_is_in_the_layer_frozen_and_merged():
    spec = AdapterSpec(r=2, alpha=4.0, token_gate=False, structural_gate=False, dense_residual=True)
    base = nn.Linear(3, 2, bias=False)
    layer = GatedLoRALinear(base, spec)
    holder = nn.Sequential(layer)
    freeze_except(holder)
    assert layer.lora_A.requires_grad and not layer.lora_residual.requires_grad
    with torch.no_grad():
        layer.lora_B.normal_()
        layer.lora_residual.copy_(torch.arange(6.0).reshape(2, 3))
    x = torch.randn(4, 3)
    want = x @ base.weight.T + 2.0 * x @ (layer.lora_B @ layer.lora_A).T + x @ layer.lora_residual.T
    torch.testing.assert_close(layer(x), want)
    layer.merge()
    torch.testing.assert_close(base(x), want)


def test_the_dense_term_is_asked_for_exactly_by_the_rules_that_fill_it(tiny_cfg):
    with pytest.raises(ValueError, match="set adapter.dense-residual=true"):
        strategies.check(tiny_cfg(**{"federation.strategy": "flora"}))
    with pytest.raises(ValueError, match="never fills it"):
        strategies.check(tiny_cfg(**{"federation.strategy": "fedavg", "adapter.dense-residual": True}))
    with pytest.raises(ValueError, match="at least the largest"):
        strategies.check(tiny_cfg(**{"federation.strategy": "flora", "adapter.dense-residual": True,
                                     "federation.heterogeneous-ranks": True, "federation.client-ranks": "4,16"}))
