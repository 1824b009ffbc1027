"""What a person sees while a federation runs: one line per round, and the launcher keeps
only those (plus warnings and errors) on the console, without colour codes."""

from server.federation import best_by_validation, round_line
from fedgate.launch.simulation import ANSI, console_line


def test_round_line_names_round_auc_loss_bytes_time_and_clients():
    record = {"round": 2, "server_eval": {"auc": 0.71234}, "train": {"train-loss": 0.25},
              "bytes": {"up": 3 * 2**20, "down": 2**20}, "wall_s": {"round": 41.26},
              "clients": [{}, {}, {}], "failures": [{}], "dropped": [], "rejected": []}
    assert round_line(record, 3) == ("round 2/3 | test AUC 0.7123 | loss 0.2500 | up 3.00 MiB | down 1.00 MiB | "
                                     "41.3 s | clients 3 ok, 1 failed")
    assert round_line({"round": 0, "server_eval": {"auc": 0.6}}, 3) == "round 0/3 | test AUC 0.6000 | loss -"
    pairs = {"round": 1, "server_eval": {"pairwise_accuracy": 0.61, "validation_pairwise_accuracy": 0.655}}
    assert round_line(pairs, 3) == "round 1/3 | test pairwise accuracy 0.6100 | validation 0.6550 | loss -"


def test_the_best_round_is_picked_on_validation_alone_and_the_earliest_wins_a_tie():
    rounds = [{"round": 0, "server_eval": {"auc": 0.60, "validation_auc": 0.70}},
              {"round": 1, "server_eval": {"auc": 0.75, "validation_auc": 0.72}},
              {"round": 2, "server_eval": {"auc": 0.80, "validation_auc": 0.72}},  # better on test: not looked at
              {"round": 3, "server_eval": {"auc": 0.70, "validation_auc": 0.71}},
              {"round": 4, "server_eval": None}]
    assert best_by_validation(rounds) == {"round": 1, "auc": 0.75, "validation_auc": 0.72}
    assert best_by_validation([{"round": 1, "server_eval": {"auc": 0.7}}]) is None  # no validation score


def test_console_keeps_progress_warnings_and_errors_only():
    assert console_line("INFO fedgate.progress: round 1/3 | test AUC 0.7")
    assert console_line("WARNING server.strategy: round 1: node 7 failed to train: boom")
    assert console_line("ERROR fedgate.simulate: run failed")
    assert console_line("(ClientAppActor pid=9) ERROR flwr: ClientApp raised")
    assert not console_line("INFO fedgate.federated.client: adapters in 12 modules")
    assert not console_line("DEBUG flwr: Backend config: {'logging_level': 'WARNING'}")
    assert not console_line("(ClientAppActor pid=123) training: 40%|####      | 4/10")
    assert ANSI.sub("", "\x1b[36m(pid=1)\x1b[0m INFO x") == "(pid=1) INFO x"
