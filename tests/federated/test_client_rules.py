"""Client-side parts of the strategies: what is shared, FFA's seeded A, pruning switches,
FedProx's proximal term, SCAFFOLD's correction and control variates, personal gates."""

import numpy as np
import pytest
import torch

from fedgate.federated.client import ClientTask, clear_cache
from fedgate.federated.client_rules import ControlVariate, configure_adapters, proximal_term, shared_keys
from fedgate.inject import adapter_modules
from fedgate.model import build_reward_model
from fedgate.state import adapter_state, to_numpy

KEYS = ["m.lora_A", "m.lora_B", "m.gate_weight", "m.struct_logit", "n.lora_A", "n.lora_B", "head.bias"]


def test_shared_keys_follow_the_strategy(tiny_cfg):
    assert shared_keys(KEYS, tiny_cfg()) == KEYS
    assert shared_keys(KEYS, tiny_cfg(**{"federation.strategy": "ffa"})) == [
        "m.lora_B", "m.gate_weight", "m.struct_logit", "n.lora_B", "head.bias"]
    assert "m.struct_logit" not in shared_keys(KEYS, tiny_cfg(**{"federation.personal-gates": True}))
    assert shared_keys(KEYS, tiny_cfg(), pruned=["m"]) == ["n.lora_A", "n.lora_B", "head.bias"]


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


def test_pruned_adapters_are_off_and_frozen_until_unpruned(tiny_cfg):
    cfg = tiny_cfg()
    model, _ = build_reward_model(cfg.model, cfg.adapter)
    name = next(iter(adapter_modules(model)))
    configure_adapters(model, cfg, pruned=[name])
    m = adapter_modules(model)[name]
    assert not m.enabled and not any(getattr(m, p).requires_grad for p in m.adapter_names)
    configure_adapters(model, cfg)
    assert m.enabled and all(getattr(m, p).requires_grad for p in m.adapter_names)


def test_proximal_term_by_hand(tiny_cfg):
    cfg = tiny_cfg()
    model, _ = build_reward_model(cfg.model, cfg.adapter)
    start = {k: v.clone() for k, v in adapter_state(model).items()}
    with torch.no_grad():
        model.head.bias.add_(1.0)  # 6 entries (5 attributes, the alignment logit), each 1 away
    assert float(proximal_term(model, start, mu=0.2)()) == pytest.approx(0.5 * 0.2 * 6)


class _Groups:
    """What ControlVariate reads of a stepper: its parameter groups and their current lr."""

    def __init__(self, model, lr):
        self.param_groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr}]


def test_control_variate_corrects_each_step_by_its_learning_rate_by_hand(tiny_cfg):
    cfg = tiny_cfg()
    model, _ = build_reward_model(cfg.model, cfg.adapter)
    start = {k: v.clone() for k, v in adapter_state(model).items()}
    c = {"head.bias": torch.full((6,), 0.3)}
    c_i = {"head.bias": torch.full((6,), 0.1)}
    variate = ControlVariate(model, c, c_i)
    groups = _Groups(model, 0.1)
    variate.after_step(groups)
    groups.param_groups[0]["lr"] = 0.05  # a schedule: the second step is smaller
    variate.after_step(groups)
    # moved by -(0.1 + 0.05) * (0.3 - 0.1) = -0.03; every other tensor untouched
    torch.testing.assert_close(model.head.bias, start["head.bias"] - 0.03)
    torch.testing.assert_close(model.head.weight, start["head.weight"])
    # no step of its own: the correction alone, so c_i+ = c_i - c + (c - c_i) = 0
    torch.testing.assert_close(variate.new_control(start)["head.bias"], torch.zeros(6), atol=1e-7, rtol=0)
    with torch.no_grad():  # as if the optimizer had also stepped 0.15 * d, d = 2: c_i+ = d
        model.head.bias.sub_(0.15 * 2.0)
    torch.testing.assert_close(variate.new_control(start)["head.bias"], torch.full((6,), 2.0))


def test_control_variate_names_a_tensor_the_optimizer_does_not_update(tiny_cfg):
    cfg = tiny_cfg()
    model, _ = build_reward_model(cfg.model, cfg.adapter)
    variate = ControlVariate(model, {"head.bias": torch.zeros(6)}, {})
    groups = _Groups(model, 0.1)
    groups.param_groups[0]["params"] = [p for p in groups.param_groups[0]["params"] if p is not model.head.bias]
    with pytest.raises(ValueError, match="head.bias"):
        variate.after_step(groups)


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


def test_scaffold_and_personal_gates_in_a_local_round(tiny_cfg):
    clear_cache()
    cfg = tiny_cfg(**{"federation.strategy": "scaffold", "federation.personal-gates": True})
    task = ClientTask(cfg, 0, 2)
    full = to_numpy(adapter_state(task.model))
    glob = {k: full[k] for k in shared_keys(full, cfg)}
    c = {k: np.zeros_like(v) for k, v in glob.items()}
    first = task.train(glob, server_round=2, control=(c, {}))
    assert set(first.delta) == set(glob) and not any(k.endswith("struct_logit") for k in first.delta)
    assert set(first.personal) == {k for k in full if k.endswith("struct_logit")}
    assert any((np.abs(first.delta[k]) > 1e-6).any() for k in first.control)  # the round moved something
    for k, v in first.control.items():  # c_i starts at 0, so the first delta is c_i+ itself
        np.testing.assert_array_equal(first.control_delta[k], v)
        # c = c_i = 0: c_i+ = (x - y) / sum of the step sizes, i.e. -delta over one positive number per tensor
        moved = np.abs(first.delta[k]) > 1e-6
        if moved.any():
            ratio = -first.delta[k][moved] / v[moved]
            assert ratio.min() > 0 and np.allclose(ratio, ratio.mean(), rtol=1e-3), k
    second = task.train(glob, server_round=3, control=(c, first.control), personal=first.personal)
    for k, v in second.control.items():
        np.testing.assert_allclose(second.control_delta[k], v - first.control[k], atol=1e-7)
    with pytest.raises(KeyError, match="different set of tensors"):
        task.train(full, server_round=4, control=(c, {}))  # personal gates must not arrive from the server
