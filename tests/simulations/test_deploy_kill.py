"""A SuperNode killed in the middle of a round, in Flower's deployment runtime on 127.0.0.1
(a real SuperLink, real SuperNode processes): the run finishes with the survivors and
rounds.jsonl says who contributed and who failed. Everything is stopped by PID."""

import time

import pytest

from fedgate.rundir import RunDir
from simulations.deploy import Deployment
from fedgate.launch.processes import flower_env, processes_with_flwr_home
from fedgate.launch.simulation import REPO, prepare_run, run_succeeded

from deploy_helpers import BASE, assert_loopback_only, clientapps, contributors, kill_tree, start_run

pytestmark = pytest.mark.integration


def test_a_supernode_killed_mid_round_leaves_the_run_to_the_survivors(tmp_path):
    # head-init zero: the victim's first ClientApp must be its round-1 training, not the
    # head-statistics query that a ridge head asks for before round 1
    overrides, run_dir = prepare_run(REPO, [BASE, "federation.min-train-nodes=2 federation.round-timeout=240 "
                                                  'train.head-init="zero"'], tmp_path / "run")
    d = Deployment(run_dir, flower_env(run_dir / "flwr-home"), tls=False, auth=False)
    started = time.time()
    try:
        d.start_superlink()
        d.start_node(0, 3)
        d.start_node(1, 3)
        victim = d.start_node(2, 3, node_config="train.epochs=400")  # still training when it is killed
        d.wait_online(3)
        assert_loopback_only(d)
        flwr = start_run(d, overrides)
        deadline = time.monotonic() + 240
        while not clientapps(victim.pid):
            assert time.monotonic() < deadline, "node 2 never started training"
            assert flwr.poll() is None, (d.logs / "flwr-run.log").read_text()[-3000:]
            time.sleep(0.5)
        time.sleep(8)  # its ClientApp is importing or training; its reply is minutes away
        kill_tree(victim.pid)
        killed_at = time.time()
        code = flwr.wait(timeout=600)
    finally:
        d.stop()
    assert run_succeeded(code, run_dir / "summary.json", started), (d.logs / "flwr-run.log").read_text()[-3000:]
    rounds = RunDir(run_dir).rounds()
    assert [r["round"] for r in rounds] == [0, 1, 2]
    first = rounds[1]
    assert len(first["sampled"]) == 3 and first["aggregated"]
    assert contributors(first) == [0, 1]
    lost = [x for x in first["failures"] + first["dropped"] if x["stage"] == "train"]
    contributed = {c["node_id"] for c in first["clients"]}
    assert [x["node_id"] for x in lost] == sorted(set(first["sampled"]) - contributed)
    assert first["finished_at"] > killed_at
    assert contributors(rounds[2]) == [0, 1] and rounds[2]["aggregated"]
    assert processes_with_flwr_home(run_dir / "flwr-home") == []
