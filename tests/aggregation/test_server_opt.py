"""Server optimizers (FedAvgM, FedAdagrad, FedAdam, FedYogi) against numbers worked by hand."""

import copy
from math import sqrt

import numpy as np
import pytest

from fedgate.aggregation.server_opt import (SERVER_OPTIMIZERS, ServerAdam, ServerMomentum, ServerSGD,
                                            server_optimizer)

TAU = 1e-3
W0 = {"w": np.array([1.0, 2.0])}
D1 = {"w": np.array([1.0, -2.0])}
D2 = {"w": np.array([0.05, 3.0])}  # w[0]: d^2 = 0.0025 < v (Yogi's v shrinks); w[1]: d^2 = 9 > v (v grows)


def two_steps(name):
    opt = server_optimizer(name, lr=0.1, beta1=0.9, beta2=0.99, tau=TAU)
    state = opt.init(W0)
    x1, state = opt.step(state, W0, D1)
    x2, state = opt.step(state, x1, D2)
    return x1, x2, state


def test_sgd_lr_1_is_params_plus_delta():
    opt = server_optimizer("sgd", lr=1.0)
    assert opt.init(W0) == {}
    new, state = opt.step({}, W0, {"w": np.array([0.5, -1.0])})
    np.testing.assert_allclose(new["w"], [1.5, 1.0])
    assert state == {}


def test_avgm_two_rounds():
    opt = server_optimizer("avgm", lr=0.5, momentum=0.9)
    state = opt.init(W0)
    np.testing.assert_array_equal(state["m/w"], [0.0, 0.0])
    x1, state = opt.step(state, W0, D1)
    np.testing.assert_allclose(state["m/w"], [1.0, -2.0])  # m = 0 + d1
    np.testing.assert_allclose(x1["w"], [1.5, 1.0])  # 1 + 0.5*1, 2 + 0.5*-2
    x2, state = opt.step(state, x1, {"w": np.array([0.5, 1.0])})
    np.testing.assert_allclose(state["m/w"], [1.4, -0.8])  # 0.9*1 + 0.5, 0.9*-2 + 1
    np.testing.assert_allclose(x2["w"], [2.2, 0.6])  # 1.5 + 0.5*1.4, 1 + 0.5*-0.8


def test_adagrad_one_step():
    opt = server_optimizer("adagrad", lr=0.1, beta1=0.9, tau=TAU)
    state = opt.init(W0)
    np.testing.assert_allclose(state["v/w"], [1e-6, 1e-6])  # v_{-1} = tau^2
    x1, state = opt.step(state, W0, D1)
    np.testing.assert_allclose(state["m/w"], [0.1, -0.2])  # 0.1 * d
    np.testing.assert_allclose(state["v/w"], [1.000001, 4.000001])  # tau^2 + d^2
    expected = [1 + 0.1 * 0.1 / (sqrt(1.000001) + TAU), 2 - 0.1 * 0.2 / (sqrt(4.000001) + TAU)]
    np.testing.assert_allclose(x1["w"], expected, rtol=1e-12)
    np.testing.assert_allclose(x1["w"], [1.00999000, 1.99000500], rtol=1e-8)


def test_adam_two_steps_against_scalar_reference():
    x1, x2, state = two_steps("adam")
    # w[0]: m1 = 0.1;  v1 = 0.99*1e-6 + 0.01*1 = 0.01000099
    #       m2 = 0.9*0.1 + 0.1*0.05 = 0.095;  v2 = 0.99*0.01000099 + 0.01*0.0025 = 0.0099259801
    # w[1]: m1 = -0.2; v1 = 0.99*1e-6 + 0.01*4 = 0.04000099
    #       m2 = 0.9*-0.2 + 0.1*3 = 0.12;  v2 = 0.99*0.04000099 + 0.01*9 = 0.1296009801
    a1 = 1 + 0.1 * 0.1 / (sqrt(0.01000099) + TAU)
    b1 = 2 + 0.1 * -0.2 / (sqrt(0.04000099) + TAU)
    np.testing.assert_allclose(x1["w"], [a1, b1], rtol=1e-12)
    a2 = a1 + 0.1 * 0.095 / (sqrt(0.0099259801) + TAU)
    b2 = b1 + 0.1 * 0.12 / (sqrt(0.1296009801) + TAU)
    np.testing.assert_allclose(x2["w"], [a2, b2], rtol=1e-12)
    np.testing.assert_allclose(x2["w"], [1.19341103, 1.93373961], rtol=1e-8)
    np.testing.assert_allclose(state["m/w"], [0.095, 0.12], rtol=1e-12)
    np.testing.assert_allclose(state["v/w"], [0.0099259801, 0.1296009801], rtol=1e-12)


def test_yogi_two_steps_against_scalar_reference():
    x1, x2, state = two_steps("yogi")
    # v = v - 0.01 * d^2 * sign(v - d^2)
    # w[0]: v1 = 1e-6 + 0.01*1 = 0.010001 (v < d^2);  v2 = 0.010001 - 0.01*0.0025 = 0.009976 (v > d^2)
    # w[1]: v1 = 1e-6 + 0.01*4 = 0.040001;            v2 = 0.040001 + 0.01*9 = 0.130001 (v < d^2)
    a1 = 1 + 0.1 * 0.1 / (sqrt(0.010001) + TAU)
    b1 = 2 + 0.1 * -0.2 / (sqrt(0.040001) + TAU)
    np.testing.assert_allclose(x1["w"], [a1, b1], rtol=1e-12)
    a2 = a1 + 0.1 * 0.095 / (sqrt(0.009976) + TAU)
    b2 = b1 + 0.1 * 0.12 / (sqrt(0.130001) + TAU)
    np.testing.assert_allclose(x2["w"], [a2, b2], rtol=1e-12)
    np.testing.assert_allclose(x2["w"], [1.19317636, 1.93368858], rtol=1e-8)
    np.testing.assert_allclose(state["v/w"], [0.009976, 0.130001], rtol=1e-12)


@pytest.mark.parametrize("name", SERVER_OPTIMIZERS)
def test_subset_delta_leaves_other_keys_and_state_untouched(name):
    opt = server_optimizer(name, lr=0.1)
    params = {"w": np.array([1.0, 2.0]), "pruned": np.array([[3.0]])}
    state = opt.init(params)
    state_before, params_before = copy.deepcopy(state), copy.deepcopy(params)
    new, new_state = opt.step(state, params, {"w": np.array([1.0, -1.0])})
    assert set(new) == {"w", "pruned"} and set(new_state) == set(state)
    np.testing.assert_array_equal(new["pruned"], [[3.0]])
    assert not np.array_equal(new["w"], params["w"])
    for k, v in new_state.items():
        if k.endswith("/pruned"):
            np.testing.assert_array_equal(v, state_before[k])
    # inputs not mutated
    for k in params:
        np.testing.assert_array_equal(params[k], params_before[k])
    for k in state:
        np.testing.assert_array_equal(state[k], state_before[k])
    assert new is not params and new_state is not state


@pytest.mark.parametrize("name", SERVER_OPTIMIZERS)
def test_dtype_preserved(name):
    opt = server_optimizer(name, lr=0.1)
    params = {"w": np.array([1.0, 2.0], dtype=np.float32)}
    new, state = opt.step(opt.init(params), params, {"w": np.array([0.5, -0.5], dtype=np.float32)})
    assert new["w"].dtype == np.float32
    assert all(v.dtype == np.float64 for v in state.values())


def test_classes_directly():
    assert ServerSGD().lr == 1.0 and ServerMomentum().momentum == 0.9
    opt = ServerAdam(lr=0.1)
    assert (opt.name, opt.beta1, opt.beta2, opt.tau) == ("adam", 0.9, 0.99, 1e-3)
    with pytest.raises(ValueError, match="beta2"):
        ServerAdam(lr=0.1, beta2=1.0)


@pytest.mark.parametrize("kwargs, match", [
    ({"name": "adamw", "lr": 0.1}, "unknown server optimizer 'adamw'.*sgd, avgm, adagrad, adam, yogi"),
    ({"name": "sgd", "lr": 0.0}, "lr must be > 0"),
    ({"name": "adam", "lr": -1.0}, "lr must be > 0"),
    ({"name": "avgm", "lr": 1.0, "momentum": 1.0}, r"momentum must be in \[0.0, 1.0\)"),
    ({"name": "avgm", "lr": 1.0, "momentum": -0.1}, "momentum"),
    ({"name": "adam", "lr": 0.1, "beta1": 1.0}, "beta1"),
    ({"name": "yogi", "lr": 0.1, "beta2": -0.5}, "beta2"),
    ({"name": "adagrad", "lr": 0.1, "tau": 0.0}, "tau must be > 0"),
])
def test_bad_names_and_hyperparameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        server_optimizer(**kwargs)


def test_bad_delta_layout_raises():
    opt = server_optimizer("adam", lr=0.1)
    state = opt.init(W0)
    with pytest.raises(ValueError, match=r"delta key 'x' \(shape \(2,\)\) is not in params"):
        opt.step(state, W0, {"x": np.zeros(2)})
    with pytest.raises(ValueError, match=r"key 'w': delta shape \(3,\) != param shape \(2,\)"):
        opt.step(state, W0, {"w": np.zeros(3)})
    with pytest.raises(ValueError, match="state has no 'm/w'"):
        opt.step({}, W0, D1)
