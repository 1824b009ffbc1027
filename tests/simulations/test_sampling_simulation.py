"""Sampling in the real simulation runtime: Flower gives the simulated nodes new ids in every
run, and the server draws its subset over partition ids, so two runs that share a seed train
and evaluate the same partitions in each round and end on the same model."""

import pytest

from fedgate.launch.simulation import simulate
from fedgate.rundir import RunDir

pytestmark = pytest.mark.integration

SAMPLED = ('model.backbone="tiny-bert" data.limit=120 server.eval-limit=20 federation.rounds=2 train.batch-size=8 '
           'server.noise-rates="" server.report=false server.baselines=false federation.fraction-train=0.5 '
           'federation.min-train-nodes=1 federation.fraction-evaluate=0.5 federation.min-evaluate-nodes=1')


def test_two_runs_with_one_seed_sample_the_same_partitions(tmp_path):
    runs = []
    for name in ("first", "second"):
        code, run_dir = simulate([SAMPLED], num_supernodes=4, out=tmp_path / name, timeout=400)
        assert code == 0, f"simulation failed; see {run_dir}"
        runs.append(RunDir(run_dir).rounds())
    drawn = []
    for rounds in runs:
        trained = [sorted(int(c["partition-id"]) for c in r["clients"]) for r in rounds[1:]]
        evaluated = [sorted(int(c["partition-id"]) for c in r["eval_clients"]) for r in rounds[1:]]
        assert all(len(p) == 2 for p in trained + evaluated) and not any(r["failures"] for r in rounds[1:])
        drawn.append((trained, evaluated))
    assert drawn[0] == drawn[1]
    node_ids = [{c["node_id"] for r in rounds[1:] for c in r["clients"]} for rounds in runs]
    assert not node_ids[0] & node_ids[1]  # the runs' nodes had other ids
    assert [r["server_eval"]["auc"] for r in runs[0]] == [r["server_eval"]["auc"] for r in runs[1]]
