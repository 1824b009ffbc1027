"""The server's gate bookkeeping on hand-worked numbers: the example-weighted profile, the
prior it gives, pruning after a streak, and what a checkpoint keeps."""

import numpy as np
import pytest

from fedgate.config import FedgateConfig
from fedgate.federated.gate_state import GateState


def fed(**flat):
    return FedgateConfig.from_flat({f"federation.{k}": v for k, v in flat.items()}).federation


def stats(token, structural):
    return {m: {"token_gate": t, "structural_gate": s} for m, t, s in zip("mn", token, structural)}


def test_profile_prior_and_pruning_after_a_streak():
    gates = GateState(fed(**{"prune-threshold": 0.5, "prune-patience": 2}))
    assert gates.prior() == {}  # no profile before the first round
    state = {"m.struct_logit": np.zeros(1, np.float32)}
    assert gates.update([stats((0.2, 0.8), (0.4, 0.9)), stats((0.6, 0.8), (0.4, 0.9))], [30, 10], state, 1) == []
    assert gates.profile["m"]["token_gate"] == pytest.approx(0.75 * 0.2 + 0.25 * 0.6)
    assert gates.prior()["m"] == pytest.approx(0.3)
    assert gates.update([stats((0.2, 0.8), (0.4, 0.9))], [30], state, 2) == ["m"]  # second round below 0.5
    assert gates.pruned == ["m"] and state["m.struct_logit"][0] == 0.0  # shared gates: the state is left alone
    resumed = GateState(gates.fed)
    resumed.load(gates.saved())
    assert resumed.pruned == ["m"] and resumed.streaks == gates.streaks


def test_a_fixed_prior_sends_nothing_and_personal_gates_set_the_servers_own_logit():
    gates = GateState(fed(**{"gate-prior": "fixed", "personal-gates": True}))
    state = {"m.struct_logit": np.zeros(1, np.float32)}
    gates.update([stats((0.5, 0.5), (0.8, 0.8))], [10], state, 1)
    assert gates.prior() == {}
    assert state["m.struct_logit"][0] == pytest.approx(np.log(0.8 / 0.2), rel=1e-6)
