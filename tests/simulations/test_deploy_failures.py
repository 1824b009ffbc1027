"""Failures in Flower's deployment runtime on 127.0.0.1 (a real SuperLink, real SuperNode
processes): a SuperNode killed in the middle of a round, a straggler past the round
timeout, and a client whose ClientApp raises. The run finishes with the others and
rounds.jsonl says who contributed and who did not. Everything is stopped by PID."""

import os
import signal
import time
from pathlib import Path

from fedgate.federated.rundir import RunDir
from simulations.deploy import CONNECTION, Deployment
from simulations.processes import children, flower_env, is_loopback, listening_addresses, processes_with_flwr_home
from simulations.run import REPO, prepare_run, run_config_arg, run_succeeded

BASE = ('model.backbone="tiny-bert" data.limit=120 server.eval-limit=30 train.batch-size=8 train.threads=1 '
        'server.noise-rates="" server.report=false federation.fraction-evaluate=0.0 federation.rounds=2 '
        'federation.min-available-nodes=2')


def _start_run(d: Deployment, overrides: dict):
    import subprocess

    cmd = ["flwr", "run", str(REPO), CONNECTION, "--stream", "--run-config", run_config_arg(overrides)]
    log = (d.logs / "flwr-run.log").open("w")
    return subprocess.Popen(cmd, env=d.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _clientapps(pid: int) -> list[int]:
    """ClientApp processes a SuperNode has running now."""
    out = []
    for child in children(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"flwr-clientapp" in cmdline:
            out.append(child)
    return out


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and its children at once, as a machine that loses power would."""
    for p in [pid, *children(pid)]:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _assert_loopback_only(d: Deployment) -> None:
    pids = [p for proc in [d.superlink, *d.nodes] for p in (proc.pid, *children(proc.pid))]
    listening = listening_addresses(pids)
    assert listening, "found no listening socket at all: the check would be vacuous"
    assert all(is_loopback(host) for host, _, _ in listening), listening


def _contributors(record: dict) -> list[int]:
    return sorted(int(c["partition-id"]) for c in record["clients"])


def test_a_supernode_killed_mid_round_leaves_the_run_to_the_survivors(tmp_path):
    overrides, run_dir = prepare_run(REPO, [BASE, "federation.min-train-nodes=2 federation.round-timeout=240"],
                                     tmp_path / "run")
    d = Deployment(run_dir, flower_env(run_dir / "flwr-home"), tls=False, auth=False)
    started = time.time()
    try:
        d.start_superlink()
        d.start_node(0, 3)
        d.start_node(1, 3)
        victim = d.start_node(2, 3, node_config="train.epochs=400")  # still training when it is killed
        d.wait_online(3)
        _assert_loopback_only(d)
        flwr = _start_run(d, overrides)
        deadline = time.monotonic() + 240
        while not _clientapps(victim.pid):
            assert time.monotonic() < deadline, "node 2 never started training"
            assert flwr.poll() is None, (d.logs / "flwr-run.log").read_text()[-3000:]
            time.sleep(0.5)
        time.sleep(8)  # its ClientApp is importing or training; its reply is minutes away
        _kill_tree(victim.pid)
        killed_at = time.time()
        code = flwr.wait(timeout=600)
    finally:
        d.stop()
    assert run_succeeded(code, run_dir / "summary.json", started), (d.logs / "flwr-run.log").read_text()[-3000:]
    rounds = RunDir(run_dir).rounds()
    assert [r["round"] for r in rounds] == [0, 1, 2]
    first = rounds[1]
    assert len(first["sampled"]) == 3 and first["aggregated"]
    assert _contributors(first) == [0, 1]
    lost = [x for x in first["failures"] + first["dropped"] if x["stage"] == "train"]
    contributed = {c["node_id"] for c in first["clients"]}
    assert [x["node_id"] for x in lost] == sorted(set(first["sampled"]) - contributed)
    assert first["finished_at"] > killed_at
    assert _contributors(rounds[2]) == [0, 1] and rounds[2]["aggregated"]
    assert processes_with_flwr_home(run_dir / "flwr-home") == []


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
        flwr = _start_run(d, overrides)
        code = flwr.wait(timeout=600)
    finally:
        d.stop()
    assert run_succeeded(code, run_dir / "summary.json", started), (d.logs / "flwr-run.log").read_text()[-3000:]
    rounds = RunDir(run_dir).rounds()
    assert [r["round"] for r in rounds] == [0, 1]
    for r in rounds[1:]:
        assert r["server_eval"]["auc"] > 0
        assert r["aggregated"] and _contributors(r) == [0], r
        assert len(r["sampled"]) == 3
        failed = [x for x in r["failures"] if x["stage"] == "train"]
        assert len(failed) == 1 and "partition-id 5 is outside 0..2" in failed[0]["reason"]
        dropped = [x for x in r["dropped"] if x["stage"] == "train"]
        assert len(dropped) == 1 and "federation.round-timeout" in dropped[0]["reason"]
        assert {failed[0]["node_id"], dropped[0]["node_id"], r["clients"][0]["node_id"]} == set(r["sampled"])
        assert r["wall_s"]["train"] >= 75  # the round waited for the straggler, then went on
    assert processes_with_flwr_home(run_dir / "flwr-home") == []
