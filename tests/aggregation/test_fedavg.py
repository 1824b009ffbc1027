"""FedAvg of deltas against numbers worked by hand."""

import numpy as np
import pytest

from fedgate.aggregation import apply_update, fedavg, weighted_mean


def test_weighted_mean_hand_worked():
    # weights 1 and 3 -> 0.25 and 0.75
    a = {"w": np.array([[1.0, 2.0]], dtype=np.float32), "b": np.array(4.0, dtype=np.float32)}
    b = {"w": np.array([[5.0, -2.0]], dtype=np.float32), "b": np.array(0.0, dtype=np.float32)}
    out = weighted_mean([a, b], [1, 3])
    np.testing.assert_allclose(out["w"], [[0.25 * 1 + 0.75 * 5, 0.25 * 2 + 0.75 * -2]])  # [[4.0, -1.0]]
    np.testing.assert_allclose(out["w"], [[4.0, -1.0]])
    assert out["b"] == pytest.approx(1.0)
    assert out["w"].dtype == np.float32 and out["b"].shape == ()


def test_fedavg_applies_the_weighted_mean_delta_to_the_global_state():
    # global 10; client deltas +2 (100 examples), -1 (50), +5 (50): mean = (200 - 50 + 250) / 200 = 2.0
    glob = {"x": np.array([10.0, 0.0])}
    deltas = [{"x": np.array([2.0, 1.0])}, {"x": np.array([-1.0, 1.0])}, {"x": np.array([5.0, -3.0])}]
    new, mean = fedavg(glob, deltas, [100, 50, 50])
    np.testing.assert_allclose(mean["x"], [2.0, 0.0])
    np.testing.assert_allclose(new["x"], [12.0, 0.0])
    # = the example-weighted mean of the local states (what FedAvg is)
    locals_ = [glob["x"] + d["x"] for d in deltas]
    np.testing.assert_allclose(new["x"], np.average(locals_, axis=0, weights=[100, 50, 50]))
    new_half, _ = fedavg(glob, deltas, [100, 50, 50], server_lr=0.5)
    np.testing.assert_allclose(new_half["x"], [11.0, 0.0])


def test_apply_update():
    out = apply_update({"a": np.ones(2, dtype=np.float32)}, {"a": np.array([0.5, -1.0], dtype=np.float32)}, lr=2.0)
    np.testing.assert_allclose(out["a"], [2.0, -1.0])


@pytest.mark.parametrize("updates, weights, match", [
    ([], [], "no updates"),
    ([{"a": np.ones(2)}], [1, 2], "1 updates but 2 weights"),
    ([{"a": np.ones(2)}, {"a": np.ones(2)}], [0, 0], "not all 0"),
    ([{"a": np.ones(2)}, {"a": np.ones(2)}], [1, -1], ">= 0"),
    ([{"a": np.ones(2)}, {"a": np.ones(3)}], [1, 1], r"update 1: key 'a' has shape \(3,\)"),
])
def test_weighted_mean_rejects_bad_input(updates, weights, match):
    with pytest.raises(ValueError, match=match):
        weighted_mean(updates, weights)


def test_weighted_mean_names_missing_keys():
    with pytest.raises(KeyError, match="different keys"):
        weighted_mean([{"a": np.ones(1)}, {"b": np.ones(1)}], [1, 1])
