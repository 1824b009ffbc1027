"""Helpers for the deployment failure test (test_deploy_failures.py): start a run against a
Deployment, find a SuperNode's ClientApp processes, kill a node as a power loss would."""

import os
import signal
from pathlib import Path

from simulations.deploy import CONNECTION, Deployment
from fedgate.launch.processes import children, is_loopback, listening_addresses
from fedgate.launch.simulation import flwr_run_command

BASE = ('model.backbone="tiny-bert" data.limit=120 server.eval-limit=30 train.batch-size=8 train.threads=1 '
        'server.noise-rates="" server.report=false server.baselines=false federation.fraction-evaluate=0.0 federation.rounds=2 '
        'federation.min-available-nodes=2')


def start_run(d: Deployment, overrides: dict, app: Path):
    """``flwr run`` of ``app`` (a folder from fedgate.launch.fab.staged_app) on the deployment,
    in the background; its output goes to logs/flwr-run.log."""
    import subprocess

    log = (d.logs / "flwr-run.log").open("w")
    return subprocess.Popen(flwr_run_command(app, CONNECTION, overrides), env=d.env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def clientapps(pid: int) -> list[int]:
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


def kill_tree(pid: int) -> None:
    """SIGKILL a process and its children at once, as a machine that loses power would."""
    for p in [pid, *children(pid)]:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def assert_loopback_only(d: Deployment) -> None:
    pids = [p for proc in [d.superlink, *d.nodes] for p in (proc.pid, *children(proc.pid))]
    listening = listening_addresses(pids)
    assert listening, "found no listening socket at all: the check would be vacuous"
    assert all(is_loopback(host) for host, _, _ in listening), listening


def contributors(record: dict) -> list[int]:
    return sorted(int(c["partition-id"]) for c in record["clients"])


