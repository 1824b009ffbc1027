"""A straggler past the round timeout and a client whose ClientApp raises, in Flower's
deployment runtime on 127.0.0.1: the round goes on with the remaining client, and
rounds.jsonl says who was dropped and who failed. Everything is stopped by PID."""

import time

import pytest

from fedgate.rundir import RunDir
from simulations.deploy import Deployment
from fedgate.launch.processes import flower_env, processes_with_flwr_home
from fedgate.launch.simulation import REPO, prepare_run, run_succeeded

from deploy_helpers import BASE, contributors, start_run

pytestmark = pytest.mark.integration


def test_a_straggler_is_dropped_and_a_raising_client_is_a_failure(tmp_path):
    # one round: the server waits out the straggler once, then evaluates and finishes the run
    overrides, run_dir = prepare_run(REPO, [BASE, "federation.min-train-nodes=1 federation.round-timeout=75 "
                                                  "federation.rounds=1"], tmp_path / "run")
    d = Deployment(run_dir, flower_env(run_dir / "flwr-home"), tls=False, auth=False)
    started = time.time()
    try:
        d.start_superlink()
        d.start_node(0, 3)
        d.start_node(1, 3, node_config="train.epochs=5000")  # hours of local training: past any timeout
        d.start_node(5, 3)  # partition 5 of 3 does not exist: its ClientApp raises
        d.wait_online(3)
        flwr = start_run(d, overrides)
        code = flwr.wait(timeout=600)
    finally:
        d.stop()
    assert run_succeeded(code, run_dir / "summary.json", started), (d.logs / "flwr-run.log").read_text()[-3000:]
    rounds = RunDir(run_dir).rounds()
    assert [r["round"] for r in rounds] == [0, 1]
    for r in rounds[1:]:
        assert r["server_eval"]["auc"] > 0
        assert r["aggregated"] and contributors(r) == [0], r
        assert len(r["sampled"]) == 3
        failed = [x for x in r["failures"] if x["stage"] == "train"]
        assert len(failed) == 1 and "partition-id 5 is outside 0..2" in failed[0]["reason"]
        dropped = [x for x in r["dropped"] if x["stage"] == "train"]
        assert len(dropped) == 1 and "federation.round-timeout" in dropped[0]["reason"]
        assert {failed[0]["node_id"], dropped[0]["node_id"], r["clients"][0]["node_id"]} == set(r["sampled"])
        assert r["wall_s"]["train"] >= 75  # the round waited for the straggler, then went on
    assert processes_with_flwr_home(run_dir / "flwr-home") == []
