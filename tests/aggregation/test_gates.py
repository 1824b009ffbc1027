"""The global gate profile and the prior derived from it."""

import numpy as np
import pytest

from fedgate.aggregation import gate_profile, prior_from_profile
from fedgate.aggregation.gates import PRIOR_EPS


def test_gate_profile_is_the_weighted_mean_per_adapter():
    c1 = {"l1": {"token_gate": 0.2, "structural_gate": 0.9}, "l2": {"token_gate": 0.6, "structural_gate": 0.5}}
    c2 = {"l1": {"token_gate": 0.8, "structural_gate": 0.5}}  # reports l1 only
    prof = gate_profile([c1, c2], [1, 3])
    assert prof["l1"]["token_gate"] == pytest.approx(0.25 * 0.2 + 0.75 * 0.8)  # 0.65
    assert prof["l1"]["structural_gate"] == pytest.approx(0.25 * 0.9 + 0.75 * 0.5)  # 0.6
    assert prof["l2"] == pytest.approx({"token_gate": 0.6, "structural_gate": 0.5})  # only c1 counts


def test_prior_is_the_token_gate_clipped_inside_0_1():
    prior = prior_from_profile({"a": {"token_gate": 0.3}, "b": {"token_gate": 1.0}, "c": {"token_gate": 0.0}})
    assert prior == pytest.approx({"a": 0.3, "b": 1 - PRIOR_EPS, "c": PRIOR_EPS})


def test_gate_profile_rejects_nan_and_bad_weights():
    with pytest.raises(ValueError, match="l1.token_gate is nan"):
        gate_profile([{"l1": {"token_gate": np.nan}}], [1])
    with pytest.raises(ValueError, match="weights"):
        gate_profile([{"l1": {"token_gate": 0.5}}], [-1])
    with pytest.raises(ValueError, match="2 clients but 1 weights"):
        gate_profile([{}, {}], [1])
