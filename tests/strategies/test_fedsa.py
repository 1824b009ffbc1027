"""FedSA-LoRA: only A travels; each client keeps its own B from one round to the next."""

import numpy as np
import pytest

from fedgate import strategies
from fedgate.federated.client import ClientTask, clear_cache
from fedgate.federated.client_rules import shared_keys
from fedgate.state import adapter_state, to_numpy
from fedgate.strategies.fedsa import PERSONAL_B


def test_only_a_travels_and_each_client_keeps_its_own_b(tiny_cfg):
    clear_cache()
    cfg = tiny_cfg(**{"federation.strategy": "fedsa", "train.max-steps": 3})
    task = ClientTask(cfg, 0, 2)
    full = to_numpy(adapter_state(task.model))
    glob = {k: full[k] for k in shared_keys(full, cfg)}
    b_keys = {k for k in full if k.endswith(".lora_B")}
    assert b_keys and not b_keys & set(glob) and any(k.endswith(".lora_A") for k in glob)
    first = task.train(glob, server_round=1)
    assert not b_keys & set(first.delta)  # B never leaves the client
    own = first.kept[PERSONAL_B]
    assert set(own) == b_keys and any(np.abs(v).max() > 0 for v in own.values())  # B trained from 0
    assert first.metrics["fedsa-rounds-kept"] == 0.0
    # another client trains on the same cached model: it starts from B = 0, not from client 0's B
    other = ClientTask(cfg, 1, 2)
    assert other.model is task.model
    second_client = other.train(glob, server_round=1)
    assert second_client.metrics["fedsa-rounds-kept"] == 0.0
    # client 0's next round starts from the B it kept
    # the client's own evaluation uses its own B, not the server's zero B
    task.evaluate(glob, kept={PERSONAL_B: own})
    now = to_numpy(adapter_state(task.model))
    assert all(np.array_equal(now[k], own[k]) for k in own)
    again = task.train(glob, server_round=2, kept={PERSONAL_B: own})
    assert again.metrics["fedsa-rounds-kept"] == 1.0
    moved = max(float(np.abs(again.kept[PERSONAL_B][k] - own[k]).max()) for k in own)
    drift_from_zero = min(float(np.abs(again.kept[PERSONAL_B][k]).max()) for k in own)
    assert 0 < moved and drift_from_zero > 0


def test_fedsa_refuses_heterogeneous_ranks_and_needs_lora(tiny_cfg):
    with pytest.raises(ValueError, match="no update B A"):
        strategies.check(tiny_cfg(**{"federation.strategy": "fedsa", "federation.heterogeneous-ranks": True}))
    with pytest.raises(ValueError, match="needs adapter.method=gated-lora"):
        strategies.check(tiny_cfg(**{"federation.strategy": "fedsa", "adapter.method": "ia3"}))
