"""The ``flwr run`` command line the launchers build (the simulation and deployment tests run
it against real SuperLinks)."""

from pathlib import Path

from fedgate.launch.simulation import flwr_run_command, run_config_arg


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
