"""Heterogeneous ranks under LoRA scaling: a node of any rank starts from the global function,
and clients of different ranks that compute the same function aggregate to that function.

An adapter's update is ``scaling * B A`` with ``scaling = alpha / r`` (or ``alpha / sqrt(r)``
under rsLoRA), so factors cannot move between ranks unchanged: with alpha 16 a rank-4 layer
multiplies ``B A`` by 4, a rank-8 layer by 2.
"""

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from fedgate import strategies
from fedgate.adapters import GatedLoRALinear
from fedgate.aggregation.lora import rescale_factors, start_error
from fedgate.aggregation.server_opt import server_optimizer
from fedgate.aggregation.update import ClientUpdate
from fedgate.config.model import AdapterSpec
from fedgate.federated.client import client_config

D_IN, D_OUT, GLOBAL_RANK, ALPHA = 6, 5, 8, 16.0


def spec(r: int, rank_scaling: str = "standard") -> AdapterSpec:
    return AdapterSpec(r=r, alpha=ALPHA, token_gate=False, structural_gate=False, rank_scaling=rank_scaling)


def low_rank_global(true_rank: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Global factors at rank 8 whose components past ``true_rank`` are zero, so that truncating
    to ``true_rank`` or more loses nothing."""
    rng = np.random.default_rng(seed)
    a, b = np.zeros((GLOBAL_RANK, D_IN)), np.zeros((D_OUT, GLOBAL_RANK))
    a[:true_rank], b[:, :true_rank] = rng.normal(size=(true_rank, D_IN)), rng.normal(size=(D_OUT, true_rank))
    return {"m.lora_A": a, "m.lora_B": b, "head.weight": rng.normal(size=(2, 3))}


def layer_output(factors: dict[str, np.ndarray], adapter: AdapterSpec, x: torch.Tensor) -> torch.Tensor:
    """A real fedgate adapter layer (gates off, zero base weight) loaded with ``factors``."""
    base = nn.Linear(D_IN, D_OUT, bias=False)
    nn.init.zeros_(base.weight)
    layer = GatedLoRALinear(base, adapter)
    with torch.no_grad():
        layer.lora_A.copy_(torch.from_numpy(factors["m.lora_A"]).float())
        layer.lora_B.copy_(torch.from_numpy(factors["m.lora_B"]).float())
    return layer(x).detach()


def heterogeneous(tiny_cfg, name: str, **over):
    return tiny_cfg(**{"federation.strategy": name, "federation.heterogeneous-ranks": True,
                       "adapter.alpha": ALPHA, **over})


def rank_flexible(tiny_cfg) -> list[str]:
    """Every registered strategy that accepts heterogeneous ranks."""
    out = []
    for name in strategies.names():
        try:
            strategies.check(heterogeneous(tiny_cfg, name))
        except ValueError:
            continue
        out.append(name)
    return out


def test_rank_flexible_rules_are_the_expected_ones(tiny_cfg):
    flexible = rank_flexible(tiny_cfg)
    assert {"fedavg", "fedavg-ab", "exact"} <= set(flexible)
    assert "ffa" not in flexible and "scaffold" not in flexible  # both refuse, naming the reason


@pytest.mark.parametrize("rank_scaling", ["standard", "rslora"])
@pytest.mark.parametrize("node_rank", [2, 4, 8, 16])
def test_a_node_of_any_rank_starts_from_the_global_function(tiny_cfg, node_rank, rank_scaling):
    state = low_rank_global(true_rank=2)
    x = torch.randn(3, D_IN)
    want = layer_output(state, spec(GLOBAL_RANK, rank_scaling), x)
    for name in rank_flexible(tiny_cfg):
        cfg = heterogeneous(tiny_cfg, name, **{"adapter.rank-scaling": rank_scaling})
        rule = strategies.create(cfg.federation)
        scale = cfg.adapter.scaling_at(GLOBAL_RANK) / cfg.adapter.scaling_at(node_rank)
        sent = rule.state_at_rank(state, node_rank, GLOBAL_RANK, scale)
        assert sent["m.lora_A"].shape == (node_rank, D_IN), name
        got = layer_output(sent, spec(node_rank, rank_scaling), x)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=f"{name} at rank {node_rank}")
        assert start_error(state, sent, 1.0 / scale) < 1e-9


def test_truncation_below_the_global_rank_is_reported(tiny_cfg):
    state = low_rank_global(true_rank=8)
    cfg = heterogeneous(tiny_cfg, "exact")
    for name in ("fedavg", "exact"):
        rule = strategies.create(dataclasses.replace(cfg.federation, strategy=name))
        scale = cfg.adapter.scaling_at(GLOBAL_RANK) / cfg.adapter.scaling_at(2)
        sent = rule.state_at_rank(state, 2, GLOBAL_RANK, scale)
        err = start_error(state, sent, 1.0 / scale)
        assert 0.05 < err < 1.0, name
    # the SVD re-factorization is the best rank-2 approximation: never worse than cutting columns
    fedavg = strategies.create(dataclasses.replace(cfg.federation, strategy="fedavg"))
    exact = strategies.create(cfg.federation)
    assert start_error(state, exact.state_at_rank(state, 2, 8, scale), 1 / scale) <= \
        start_error(state, fedavg.state_at_rank(state, 2, 8, scale), 1 / scale) + 1e-12


def test_padding_by_hand(tiny_cfg):
    """Global rank 1, alpha 4 (scaling 4); a rank-2 node (scaling 2) gets the zero-padded A and
    twice the zero-padded B: 2 * (2 B) A = 4 B A."""
    state = {"m.lora_A": np.array([[3.0, 4.0]]), "m.lora_B": np.array([[1.0], [2.0]])}
    sent = strategies.create(heterogeneous(tiny_cfg, "fedavg").federation).state_at_rank(state, 2, 1, scale=2.0)
    np.testing.assert_allclose(sent["m.lora_A"], [[3, 4], [0, 0]])
    np.testing.assert_allclose(sent["m.lora_B"], [[2, 0], [4, 0]])
    np.testing.assert_allclose(2.0 * sent["m.lora_B"] @ sent["m.lora_A"], [[12, 16], [24, 32]])


def test_rescale_factors_scales_the_product_and_refuses_bad_factors():
    state = low_rank_global(true_rank=3)
    out = rescale_factors(state, 0.25)
    np.testing.assert_allclose(out["m.lora_B"] @ out["m.lora_A"], 0.25 * state["m.lora_B"] @ state["m.lora_A"])
    np.testing.assert_array_equal(out["m.lora_A"], state["m.lora_A"])  # a fresh adapter's A keeps its size
    np.testing.assert_array_equal(out["head.weight"], state["head.weight"])
    with pytest.raises(ValueError, match="factor"):
        rescale_factors(state, 0.0)


def _same_function_clients(cfg, ranks: list[int], seed: int = 1):
    """Clients at ``ranks`` whose local adapters all compute one rank-2 function F (in the
    global scaling), each started from the global state sent to it: (updates, sent, F)."""
    glob = low_rank_global(true_rank=2, seed=0)
    target = low_rank_global(true_rank=2, seed=seed)  # the function every client ends at
    rule, svd = strategies.create(cfg.federation), strategies.get("exact")(cfg.federation)
    updates, sent, scales = [], [], []
    for node, r in enumerate(ranks):
        scale = cfg.adapter.scaling_at(GLOBAL_RANK) / cfg.adapter.scaling_at(r)
        start = rule.state_at_rank(glob, r, GLOBAL_RANK, scale)
        local = svd.state_at_rank(target, r, GLOBAL_RANK, scale)  # re-factorized: exact at rank >= 2
        updates.append(ClientUpdate(node, {k: local[k] - start[k] for k in start}, 10))
        sent.append(start)
        scales.append(1.0 / scale)
    function = ALPHA / GLOBAL_RANK * target["m.lora_B"] @ target["m.lora_A"]
    return glob, updates, sent, scales, function


def test_exact_aggregates_clients_of_different_ranks_that_compute_one_function_to_that_function(tiny_cfg):
    """Before the scaling fix this returned 0.75x the function for ranks 8 and 4 (the rank-4
    client's B A is half the rank-8 one's for the same update)."""
    cfg = heterogeneous(tiny_cfg, "exact")
    glob, updates, sent, scales, function = _same_function_clients(cfg, [8, 4])
    rule = strategies.create(cfg.federation)
    out = rule.aggregate(glob, updates, server_optimizer("sgd", 1.0), {},
                         strategies.RoundInputs(sent=sent, rank=GLOBAL_RANK, scales=scales))
    got = ALPHA / GLOBAL_RANK * out.params["m.lora_B"] @ out.params["m.lora_A"]
    np.testing.assert_allclose(got, function, rtol=1e-9, atol=1e-9)
    # without the scales, the unscaled products average to 0.75x
    out = rule.aggregate(glob, updates, server_optimizer("sgd", 1.0), {},
                         strategies.RoundInputs(sent=sent, rank=GLOBAL_RANK))
    got = ALPHA / GLOBAL_RANK * out.params["m.lora_B"] @ out.params["m.lora_A"]
    np.testing.assert_allclose(got, 0.75 * function, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("ranks", [[2, 8], [4, 16], [16, 16]])
def test_exact_function_equality_across_ranks(tiny_cfg, ranks):
    cfg = heterogeneous(tiny_cfg, "exact", **{"adapter.rank-scaling": "rslora"})
    glob, updates, sent, scales, _ = _same_function_clients(cfg, ranks)
    out = strategies.create(cfg.federation).aggregate(
        glob, updates, server_optimizer("sgd", 1.0), {}, strategies.RoundInputs(sent=sent, rank=GLOBAL_RANK,
                                                                               scales=scales))
    target = low_rank_global(true_rank=2, seed=1)
    np.testing.assert_allclose(out.params["m.lora_B"] @ out.params["m.lora_A"],
                               target["m.lora_B"] @ target["m.lora_A"], atol=1e-9)


@pytest.mark.parametrize("node_rank", [2, 4, 16])
def test_fedavg_moves_the_global_function_by_what_a_client_of_another_rank_changed(tiny_cfg, node_rank):
    """A client that trains only B changes its function by s_k dB A_k; after FedAvg (one client)
    the global function changed by exactly that."""
    cfg = heterogeneous(tiny_cfg, "fedavg-ab")
    glob = low_rank_global(true_rank=2)
    rule = strategies.create(cfg.federation)
    s_k, s_g = cfg.adapter.scaling_at(node_rank), cfg.adapter.scaling_at(GLOBAL_RANK)
    start = rule.state_at_rank(glob, node_rank, GLOBAL_RANK, s_g / s_k)
    d_b = np.random.default_rng(3).normal(size=(D_OUT, node_rank))
    delta = {"m.lora_A": np.zeros_like(start["m.lora_A"]), "m.lora_B": d_b, "head.weight": np.zeros((2, 3))}
    out = rule.aggregate(glob, [ClientUpdate(0, delta, 5)], server_optimizer("sgd", 1.0), {},
                         strategies.RoundInputs(rank=GLOBAL_RANK, scales=[s_k / s_g]))
    changed = s_g * (out.params["m.lora_B"] @ out.params["m.lora_A"] - glob["m.lora_B"] @ glob["m.lora_A"])
    np.testing.assert_allclose(changed, s_k * d_b @ start["m.lora_A"], atol=1e-9)


def test_rank_scaling_choice():
    assert AdapterSpec(r=16, alpha=16.0).scaling == 1.0
    assert AdapterSpec(r=16, alpha=16.0, rank_scaling="rslora").scaling == 4.0
    assert AdapterSpec(r=4, alpha=16.0).scaling_at(16) == 1.0
    with pytest.raises(ValueError, match="adapter.rank-scaling"):
        AdapterSpec(rank_scaling="sqrt")


def test_a_node_may_not_change_alpha_or_train_its_own_rank_without_heterogeneous_ranks(tiny_cfg):
    from tests.conftest import TINY_FEDERATION
    run = {**TINY_FEDERATION, "federation.heterogeneous-ranks": True}
    assert client_config(run, {"adapter.r": 4}).adapter.r == 4
    with pytest.raises(ValueError, match="node config sets adapter.alpha"):
        client_config(run, {"adapter.r": 4, "adapter.alpha": 8.0})
    with pytest.raises(ValueError, match="heterogeneous-ranks=true"):
        client_config({**TINY_FEDERATION, "adapter.r": 8}, {"adapter.r": 4})
