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


def test_pruning_streaks_and_the_cap_on_how_many_go_lowest_gate_first():
    from fedgate.aggregation.gates import below_threshold_streaks, newly_pruned

    profile = {"a": {"structural_gate": 0.30}, "b": {"structural_gate": 0.10}, "c": {"structural_gate": 0.20},
               "d": {"structural_gate": 0.90}}
    streaks = below_threshold_streaks({"a": 1, "d": 3}, profile, threshold=0.5)
    assert streaks == {"a": 2, "b": 1, "c": 1, "d": 0}  # d is back above: its streak resets
    assert newly_pruned(streaks, 1, pruned=[]) == ["a", "b", "c"]
    assert newly_pruned(streaks, 2, pruned=[]) == ["a"]
    assert newly_pruned(streaks, 1, pruned=["b"]) == ["a", "c"]
    gates = {m: v["structural_gate"] for m, v in profile.items()}
    assert newly_pruned(streaks, 1, pruned=[], limit=2, gates=gates) == ["b", "c"]  # 0.10 and 0.20 before 0.30
    assert newly_pruned(streaks, 1, pruned=[], limit=0, gates=gates) == []
