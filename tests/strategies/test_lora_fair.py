"""LoRA-FAIR: the ridge correction of the averaged B, by hand and against the mismatch of
plain factor averaging."""

import numpy as np
import pytest

from fedgate import strategies
from fedgate.aggregation.server_opt import server_optimizer
from fedgate.aggregation.update import ClientUpdate
from fedgate.strategies.lora_fair import LAMBDA, refine_b


def test_refine_b_by_hand():
    """A = I (r = 2): the penalty is LAMBDA * 2 / 2, so B + Delta B = T / (1 + LAMBDA)."""
    target = np.array([[1.0, 2.0], [3.0, 4.0]])
    b = refine_b(np.zeros((2, 2)), np.eye(2), target)
    np.testing.assert_allclose(b, target / (1 + LAMBDA))
    assert np.array_equal(refine_b(np.ones((2, 2)), np.zeros((2, 3)), np.ones((2, 3))), np.ones((2, 2)))


def test_the_refined_factors_come_closer_to_the_mean_product_than_the_averaged_ones(tiny_cfg):
    rng = np.random.default_rng(0)
    glob = {"m.lora_A": rng.normal(size=(4, 6)), "m.lora_B": rng.normal(size=(5, 4))}
    deltas = [{k: rng.normal(size=v.shape) for k, v in glob.items()} for _ in range(3)]
    cfg = tiny_cfg(**{"federation.strategy": "lora-fair", "federation.weighting": "uniform"})
    out = strategies.create(cfg.federation).aggregate(
        glob, [ClientUpdate(i, d, 1) for i, d in enumerate(deltas)], server_optimizer("sgd", 1.0), {},
        strategies.RoundInputs(sent=[glob] * 3, rank=4))
    target = np.mean([(glob["m.lora_B"] + d["m.lora_B"]) @ (glob["m.lora_A"] + d["m.lora_A"]) for d in deltas], 0)
    a_mean = glob["m.lora_A"] + np.mean([d["m.lora_A"] for d in deltas], 0)
    b_mean = glob["m.lora_B"] + np.mean([d["m.lora_B"] for d in deltas], 0)
    np.testing.assert_allclose(out.params["m.lora_A"], a_mean)  # A is the plain average
    plain = np.linalg.norm(target - b_mean @ a_mean)
    refined = np.linalg.norm(target - out.params["m.lora_B"] @ out.params["m.lora_A"])
    best = np.linalg.norm(target - target @ np.linalg.pinv(a_mean) @ a_mean)  # the best B for this A
    assert refined < plain and refined == pytest.approx(best, rel=1e-3)
    assert out.info["fair_residual"] == pytest.approx(refined / np.linalg.norm(target), abs=1e-6)
