"""Failures in Flower's deployment runtime on 127.0.0.1 (a real SuperLink, real SuperNode
processes), all in one deployment of five nodes: a SuperNode killed in the middle of a round,
a straggler past the round timeout, and a node whose ClientApp raises. Both rounds finish with
the two healthy nodes, and rounds.jsonl says who contributed, who was dropped and who failed.
Everything binds to loopback and is stopped by PID."""

import os
import time

import pytest

from fedgate.rundir import RunDir
from simulations.deploy import Deployment
from fedgate.launch.fab import staged_app
from fedgate.launch.processes import flower_env, processes_with_flwr_home
from fedgate.launch.simulation import REPO, prepare_run, run_succeeded

from deploy_helpers import BASE, assert_loopback_only, clientapps, contributors, kill_tree, start_run

pytestmark = pytest.mark.integration

ROUND_TIMEOUT = 75  # a healthy node's fresh ClientApp imports, trains and replies well within it
LOWEST = 19  # the busy nodes' niceness: their training must not starve the healthy nodes' ClientApps


def test_killed_straggling_and_raising_nodes_leave_each_round_to_the_healthy_ones(tmp_path):
    # head-init zero: the victim's first ClientApp must be its round-1 training, not the
    # head-statistics query that a ridge head asks for before round 1
    overrides, run_dir = prepare_run(REPO, [BASE, f"federation.min-train-nodes=2 federation.round-timeout={ROUND_TIMEOUT} "
                                                  'train.head-init="zero"'], tmp_path / "run")
    d = Deployment(run_dir, flower_env(run_dir / "flwr-home"), tls=False, auth=False)
    started = time.time()
    with staged_app(REPO) as app:
        try:
            d.start_superlink()
            d.start_node(0, 4)
            d.start_node(1, 4)
            victim = d.start_node(2, 4, node_config="train.epochs=400")  # still training when it is killed
            straggler = d.start_node(3, 4, node_config="train.epochs=5000")  # hours of training: past any timeout
            for busy in (victim, straggler):  # their ClientApp processes inherit it
                os.setpriority(os.PRIO_PROCESS, busy.pid, LOWEST)
            d.start_node(5, 4)  # partition 5 of 4 does not exist: its ClientApp raises
            d.wait_online(5)
            assert_loopback_only(d)
            flwr = start_run(d, overrides, app)
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
    assert len(first["sampled"]) == 5 and first["aggregated"] and first["finished_at"] > killed_at
    assert first["wall_s"]["train"] >= ROUND_TIMEOUT  # the round waited for the straggler, then went on
    for r in rounds[1:]:
        assert r["aggregated"] and contributors(r) == [0, 1], r
        assert r["server_eval"]["auc"] > 0
        failed = [x for x in r["failures"] if x["stage"] == "train"]
        dropped = [x for x in r["dropped"] if x["stage"] == "train"]
        assert sum("partition-id 5 is outside 0..3" in x["reason"] for x in failed) == 1
        assert dropped and all("federation.round-timeout" in x["reason"] for x in dropped)  # the straggler at least
        lost = [x["node_id"] for x in failed + dropped]
        assert len(lost) == len(set(lost))  # a node is dropped or failed, never both
        assert sorted(lost) == sorted(set(r["sampled"]) - {c["node_id"] for c in r["clients"]})
    assert len(first["sampled"]) - len(first["clients"]) == 3  # victim, straggler and the raising node
    assert processes_with_flwr_home(run_dir / "flwr-home") == []
