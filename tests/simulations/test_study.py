"""The study runner and report on a tiny configuration: the adversarial study's clean and
flipped fedavg runs and a flipped ``validated`` run (real Flower simulations, 5 clients, one
of them on flipped labels), resumed without re-running, and its tables rebuilt by
``python -m simulations.report`` (``fedgate report`` points there)."""

import csv
import json
from pathlib import Path

import pytest

from fedgate.cli import main as fedgate_main
from simulations import adversarial
from simulations.report import main as report_main

pytestmark = pytest.mark.integration

TINY = ["model.backbone=\"tiny-bert\"", "server.baselines=false", "data.limit=200", "server.eval-limit=40", "federation.rounds=1",
        "train.batch-size=8", "train.threads=1"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "adv"
    args = ["--out", str(out), "--variants", "fedavg-clean,fedavg-flipped,fedavg-absent,validated-flipped", "--num-supernodes", "5",
            "--timeout", "400"] + [a for kv in TINY for a in ("--set", kv)]
    assert adversarial.main(args) == 0
    return out, args


def test_the_flipped_client_trained_on_flipped_labels_only_in_the_flipped_run(study):
    out, _ = study
    with (out / "results.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    assert row["rule"] == "fedavg" and len(row["flipped_partitions"].split(",")) == 1
    for name, flipped in (("fedavg-clean", 0), ("fedavg-flipped", 1)):
        rounds = [json.loads(line) for line in (out / name / "seed-0" / "rounds.jsonl").read_text().splitlines()]
        assert sum(c["flipped-rows"] > 0 for c in rounds[1]["clients"]) == flipped
    assert float(row["auc_clean"]) != float(row["auc_flipped"])
    assert (out / "auc_per_round.png").stat().st_size > 0
    configs = json.loads((out / "variants.json").read_text())
    assert "shards.flipped-clients=0.2" in configs["fedavg-flipped"] and 'tiny-bert' in configs["fedavg-clean"]


def test_the_absent_reference_runs_without_exactly_the_flipped_client(study):
    out, _ = study
    with (out / "results.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    flipped = int(row["flipped_partitions"])
    rounds = [json.loads(line) for line in (out / "fedavg-absent" / "seed-0" / "rounds.jsonl").read_text().splitlines()]
    trained = rounds[1]
    assert sorted(int(c["partition-id"]) for c in trained["clients"]) == sorted(set(range(5)) - {flipped})
    assert len(trained["failures"]) == 1 and "absent" in trained["failures"][0]["reason"]
    assert rounds[0]["head_init"]["clients"] == 4
    assert 0.0 <= float(row["auc_absent"]) <= 1.0 and row["vs_absent_points"]


def test_validated_scores_each_clients_head_statistics_before_summing_them(study):
    out, _ = study
    head = json.loads((out / "validated-flipped" / "seed-0" / "rounds.jsonl").read_text().splitlines()[0])["head_init"]
    scores = head["client_validation_auc"]
    assert len(scores) == 5 and all(0.0 <= s <= 1.0 for s in scores.values())
    assert len(head["excluded"]) <= 1 and {str(n) for n in head["excluded"]} <= set(scores)
    assert head["clients"] == 5 - len(head["excluded"])
    below = [n for n, s in scores.items() if s < 0.5]
    assert [str(n) for n in head["excluded"]] == ([min(below, key=scores.get)] if below else [])
    fedavg = json.loads((out / "fedavg-flipped" / "seed-0" / "rounds.jsonl").read_text().splitlines()[0])["head_init"]
    assert "excluded" not in fedavg and fedavg["clients"] == 5


def test_the_runs_shared_one_store_of_lower_layer_states_and_it_is_gone(study):
    out, _ = study
    names = ["fedavg-clean", "fedavg-flipped", "fedavg-absent", "validated-flipped"]
    stores = {json.loads((out / n / "seed-0" / "config.json").read_text())["config"]["train.cache-dir"] for n in names}
    assert len(stores) == 1
    store = Path(stores.pop())
    assert store.name.startswith("fedgate-study-states-") and not store.exists()
    # the first run computed the server's test and validation states; the next one read them
    logs = [(out / n / "seed-0" / "simulation.log").read_text() for n in names[:2]]
    assert [log.count("caching layers") > 0 for log in logs] == [True, False], [log.count("caching layers") for log in logs]


def test_a_finished_study_is_not_run_again(study, monkeypatch, capsys):
    out, args = study
    monkeypatch.setattr("simulations.study.simulate", lambda *a, **k: pytest.fail("ran a finished variant again"))
    assert adversarial.main(args) == 0
    assert capsys.readouterr().out.count("already completed") == 4


def test_the_report_rebuilds_the_tables_without_running(study, monkeypatch, capsys):
    out, _ = study
    before = (out / "results.md").read_text()
    (out / "results.md").unlink()
    monkeypatch.setattr("simulations.study.simulate", lambda *a, **k: pytest.fail("report must not run anything"))
    assert report_main([str(out)]) == 0
    assert (out / "results.md").read_text() == before
    assert "| fedavg |" in capsys.readouterr().out
    assert fedgate_main(["report", str(out)]) == 2  # the library's command does not run study scripts
    assert f"python -m simulations.report {out}" in capsys.readouterr().err


def test_running_one_variant_into_a_finished_study_keeps_the_others(study, monkeypatch):
    out, args = study
    monkeypatch.setattr("simulations.study.simulate", lambda *a, **k: pytest.fail("ran a finished variant again"))
    i = args.index("--variants")
    assert adversarial.main(args[:i + 1] + ["fedavg-clean"] + args[i + 2:]) == 0
    assert list(json.loads((out / "variants.json").read_text())) == ["fedavg-clean", "fedavg-flipped", "fedavg-absent",
                                                                   "validated-flipped"]
    assert json.loads((out / "study.json").read_text())["seeds"] == [0]
    with (out / "results.csv").open() as f:
        assert [r["rule"] for r in csv.DictReader(f)] == ["fedavg"]


def test_a_run_that_did_not_complete_is_started_over_in_a_clean_directory(study, monkeypatch):
    """Last in this module: it leaves the study with one failed run."""
    out, args = study
    failed = out / "fedavg-clean" / "seed-0"
    summary = json.loads((failed / "summary.json").read_text())
    (failed / "summary.json").write_text(json.dumps({**summary, "status": "failed"}))
    seen = []

    def simulate(run_config, *, out, **kwargs):
        seen.append(Path(out).exists())
        return 1, Path(out)

    monkeypatch.setattr("simulations.study.simulate", simulate)
    adversarial.main(args)
    assert seen == [False]  # its old rounds.jsonl would have been appended to
