"""A 2-round Flower simulation whose clients each train on two rank processes (engine.world-size=2,
DeepSpeed ZeRO-2, gloo on CPU): the ranks start from inside Ray's ClientApp actors and leave
nothing behind."""

import pytest

from fedgate.federated.ranks import processes_with_token
from fedgate.rundir import RunDir
from fedgate.launch.simulation import simulate

RANKS = ['model.backbone="tiny-llama" data.limit=120 server.eval-limit=30 federation.rounds=2 train.batch-size=8 '
         'engine.name="deepspeed" engine.zero-stage=2 engine.world-size=2 engine.timeout-s=900 server.noise-rates="" '
         'federation.fraction-evaluate=0.0 server.report=false server.baselines=false']


@pytest.mark.slow
@pytest.mark.integration
def test_two_rounds_with_clients_of_two_ranks(tmp_path):
    code, run_dir = simulate(RANKS, num_supernodes=2, out=tmp_path / "run", timeout=1100)
    assert code == 0
    rounds = RunDir(run_dir).rounds()
    assert [r["round"] for r in rounds] == [0, 1, 2]
    for r in rounds[1:]:
        assert len(r["clients"]) == 2 and not r["failures"] and not r["rejected"]
        assert all(c["world-size"] == 2 for c in r["clients"])
        # the busiest rank trained on at most 4 of each batch of 8 rows (one process: all 8, bar the last batch)
        assert all(c["rank-rows-trained"] <= c["steps"] * 4 for c in r["clients"])
    assert processes_with_token() == []
