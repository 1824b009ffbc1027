"""A server stopped after round k and resumed from its run directory ends exactly where an
uninterrupted run with the same seed ends, server optimizer state included (FedYogi keeps
two moment arrays per tensor; losing them on resume would change round k+1)."""

import numpy as np
import pytest

from fedgate.rundir import RunDir, load_checkpoint
from fedgate.launch.simulation import simulate

pytestmark = pytest.mark.integration

RUN = ('model.backbone="tiny-bert" data.limit=100 server.eval-limit=20 train.batch-size=8 server.noise-rates="" '
       'federation.fraction-evaluate=0.0 server.report=false server.baselines=false federation.strategy="fedyogi" ')


def test_resumed_run_matches_the_uninterrupted_one(tmp_path):
    code, whole = simulate([RUN + "federation.rounds=3"], num_supernodes=2, out=tmp_path / "whole", timeout=400)
    assert code == 0
    code, part = simulate([RUN + "federation.rounds=2"], num_supernodes=2, out=tmp_path / "part", timeout=400)
    assert code == 0
    assert RunDir(part).server_arrays(2), "the fedyogi state was not checkpointed"
    code, resumed = simulate([RUN + f'federation.rounds=3 server.resume-from="{part}"'], num_supernodes=2,
                             timeout=400)
    assert code == 0 and resumed == part
    assert [r["round"] for r in RunDir(part).rounds()] == [0, 1, 2, 3]  # none lost, none repeated
    _, done_a, state_a, _ = load_checkpoint(whole)
    _, done_b, state_b, _ = load_checkpoint(part)
    assert done_a == done_b == 3 and set(state_a) == set(state_b)
    for k in state_a:
        np.testing.assert_allclose(state_b[k], state_a[k], rtol=0, atol=1e-6, err_msg=k)
    moved = max(float(np.abs(state_a[k] - v).max()) for k, v in load_checkpoint(whole / "checkpoints" /
                                                                                "round-002.safetensors")[2].items())
    assert moved > 1e-4  # round 3 changed the adapters, so the equality above says something
