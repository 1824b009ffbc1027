"""SCAFFOLD's client side: the correction after each optimizer step by hand, and the control
variates of two local rounds (with personal gates, which stay off the wire)."""

import numpy as np
import pytest
import torch

from fedgate.federated.client import ClientTask, clear_cache
from fedgate.federated.client_rules import shared_keys
from fedgate.model import build_reward_model
from fedgate.state import adapter_state, to_numpy
from fedgate.strategies.scaffold import CLIENT_CONTROL, CONTROL_DELTA, SERVER_CONTROL, ControlVariate


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


def test_scaffold_and_personal_gates_in_a_local_round(tiny_cfg):
    clear_cache()
    cfg = tiny_cfg(**{"federation.strategy": "scaffold", "federation.personal-gates": True})
    task = ClientTask(cfg, 0, 2)
    full = to_numpy(adapter_state(task.model))
    glob = {k: full[k] for k in shared_keys(full, cfg)}
    c = {k: np.zeros_like(v) for k, v in glob.items()}
    first = task.train(glob, server_round=2, received={SERVER_CONTROL: c}, kept={})
    c_1, dc_1 = first.kept[CLIENT_CONTROL], first.uplink[CONTROL_DELTA]
    assert set(first.delta) == set(glob) and not any(k.endswith("struct_logit") for k in first.delta)
    assert set(first.personal) == {k for k in full if k.endswith("struct_logit")}
    assert any((np.abs(first.delta[k]) > 1e-6).any() for k in c_1)  # the round moved something
    for k, v in c_1.items():  # c_i starts at 0, so the first delta is c_i+ itself
        np.testing.assert_array_equal(dc_1[k], v)
        # c = c_i = 0: c_i+ = (x - y) / sum of the step sizes, i.e. -delta over one positive number per tensor
        moved = np.abs(first.delta[k]) > 1e-6
        if moved.any():
            ratio = -first.delta[k][moved] / v[moved]
            assert ratio.min() > 0 and np.allclose(ratio, ratio.mean(), rtol=1e-3), k
    second = task.train(glob, server_round=3, received={SERVER_CONTROL: c}, kept={CLIENT_CONTROL: c_1},
                        personal=first.personal)
    c_2, dc_2 = second.kept[CLIENT_CONTROL], second.uplink[CONTROL_DELTA]
    for k, v in c_2.items():
        np.testing.assert_allclose(dc_2[k], v - c_1[k], atol=1e-7)
    with pytest.raises(KeyError, match="different set of tensors"):
        task.train(full, server_round=4, received={SERVER_CONTROL: c})  # personal gates must not arrive from the server
