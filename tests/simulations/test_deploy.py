"""Flower's deployment runtime on 127.0.0.1: a real SuperLink and real SuperNode processes
(a fresh ClientApp process per message), with TLS and SuperNode authentication, and the
insecure variant. Everything binds to loopback and is stopped by PID."""

import json
import time

import pytest

from fedgate.rundir import RunDir
from simulations.deploy import CONNECTION, Deployment, deploy
from fedgate.launch.fab import staged_app
from fedgate.launch.processes import alive, flower_env, processes_with_flwr_home
from fedgate.launch.simulation import REPO, flwr_run_command, prepare_run, run_succeeded, stream_flwr_run

TINY = ['model.backbone="tiny-bert" data.limit=120 server.eval-limit=30 federation.rounds=1 train.batch-size=8 '
        'server.noise-rates="" server.report=false server.baselines=false federation.fraction-evaluate=0.0 train.threads=1']


@pytest.mark.integration
def test_tls_and_auth_run_completes_and_an_unknown_node_is_refused(tmp_path):
    overrides, run_dir = prepare_run(REPO, TINY, tmp_path / "run")
    d = Deployment(run_dir, flower_env(run_dir / "flwr-home"), tls=True, auth=True)
    started = time.time()
    try:
        d.start_superlink()
        assert d.pki is not None and d.pki.ca_cert.is_file()
        for i in range(2):
            d.start_node(i, 2)
        intruder = d.start_node(2, 3, register=False)  # a key the SuperLink never saw
        assert intruder.wait(timeout=120) != 0
        log = (d.logs / "supernode-2.log").read_text()
        assert "Failed to activate SuperNode" in log or "2004" in log
        d.wait_online(2)
        assert d.online_nodes() == 2
        with staged_app(REPO) as app:
            code = stream_flwr_run(flwr_run_command(app, CONNECTION, overrides), d.env, timeout=400)
    finally:
        d.stop()
    assert run_succeeded(code, run_dir / "summary.json", started)
    rounds = RunDir(run_dir).rounds()
    assert [r["round"] for r in rounds] == [0, 1]
    assert sorted(c["partition-id"] for c in rounds[1]["clients"]) == [0, 1]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    for proc in [*d.nodes, d.superlink]:
        assert not alive(proc.pid)


@pytest.mark.integration
def test_insecure_loopback_deployment(tmp_path):
    # a zero head: no round-0 query, so each node starts one ClientApp process fewer (the
    # TLS run above covers the query in deployment)
    code, run_dir = deploy([*TINY, 'train.head-init="zero"'], nodes=2, tls=False, auth=False, out=tmp_path / "run",
                           timeout=400)
    assert code == 0
    rounds = RunDir(run_dir).rounds()
    assert rounds[-1]["round"] == 1 and len(rounds[-1]["clients"]) == 2
    assert not (run_dir / "pki").exists()  # no TLS material in the insecure variant
    assert processes_with_flwr_home(run_dir / "flwr-home") == []


def test_gpu_groups_give_each_node_its_devices():
    from simulations.deploy import gpu_groups

    assert gpu_groups("0,1,2,3", 4) == ["0", "1", "2", "3"]
    assert gpu_groups("0,1:2,3", 2) == ["0,1", "2,3"]
    assert gpu_groups("0:1,2,3", 2) == ["0", "1,2,3"]
    for text, nodes, message in (("0,1", 3, "for 2 nodes, --nodes is 3"), ("0,1:2", 3, "for 2 nodes"),
                                 ("0,a", 2, "'a' is not"), ("0,0:1", 2, "distinct"), ("0,1:", 2, "'' is not")):
        with pytest.raises(ValueError, match=message):
            gpu_groups(text, nodes)


def test_several_gpus_per_node_without_deepspeed_are_refused_before_anything_starts(tmp_path):
    with pytest.raises(ValueError, match=r"2 devices.*engine.name"):
        deploy([], nodes=2, gpus=["0,1", "2,3"], tls=False, auth=False, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()
