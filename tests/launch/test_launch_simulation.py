"""The ``flwr run`` command line the launchers build (the simulation and deployment tests run
it against real SuperLinks)."""

import urllib.request
from pathlib import Path

import pytest

from fedgate.launch.processes import alive, flower_env
from fedgate.launch.simulation import REPO, flwr_run_command, prepare_run, run_config_arg, running_superlink


def test_run_config_is_one_string_of_toml_values():
    assert run_config_arg({"federation.rounds": 3, "model.backbone": "tiny-bert", "server.report": False,
                           "train.lr-adapter": 0.001}) == (
        'federation.rounds=3 model.backbone="tiny-bert" server.report=false train.lr-adapter=0.001')


def test_the_command_streams_the_app_on_the_named_connection():
    assert flwr_run_command(Path("/tmp/app"), "fedgate-deploy", {"federation.rounds": 2}) == [
        "flwr", "run", "/tmp/app", "fedgate-deploy", "--stream", "--run-config", "federation.rounds=2"]


def test_a_simulation_passes_its_federation_config_before_the_run_config():
    cmd = flwr_run_command(Path("app"), "fedgate-sim", {}, "num-supernodes=4 client-resources-num-cpus=1")
    assert cmd == ["flwr", "run", "app", "fedgate-sim", "--stream",
                   "--federation-config", "num-supernodes=4 client-resources-num-cpus=1", "--run-config", ""]


def test_a_new_run_is_refused_a_directory_that_holds_a_run(tmp_path):
    overrides, run_dir = prepare_run(REPO, ['model.backbone="tiny-bert"'], tmp_path / "run")
    assert run_dir == (tmp_path / "run").resolve() and overrides["server.output-dir"] == str(run_dir)
    (run_dir / "rounds.jsonl").write_text('{"round": 0}\n')
    with pytest.raises(ValueError, match="holds a run already; continue it with server.resume-from"):
        prepare_run(REPO, ['model.backbone="tiny-bert"'], run_dir)
    assert (run_dir / "rounds.jsonl").read_text() == '{"round": 0}\n'  # nothing lost


@pytest.mark.integration  # starts a real SuperLink
def test_the_superlink_answers_inside_the_block_and_is_stopped_by_pid_when_it_raises(tmp_path):
    flwr_home = tmp_path / "flwr-home"
    with pytest.raises(RuntimeError, match="the run failed"):
        with running_superlink(flwr_home, flower_env(flwr_home)) as (proc, port):
            pid = proc.pid
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as reply:
                assert reply.status == 200
            raise RuntimeError("the run failed")
    assert not alive(pid)
    assert (flwr_home / "superlink" / "superlink.log").exists()
