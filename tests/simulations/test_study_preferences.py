"""The preference study end to end at tiny scale: a real federation on an HH-format pair
file, its centralized twin on the same pairs and steps, and the table that pairs them."""

import json

import pytest

from simulations import study_preferences
from tests.test_pairwise import _hh_file

TINY = ["model.backbone=\"tiny-bert\"", "federation.rounds=1", "train.batch-size=4", "train.threads=1",
        "server.noise-rates=\"0.2\"", "shards.partitioner=\"iid\""]


@pytest.mark.integration
def test_the_study_compares_a_federation_with_centralized_training_on_the_same_pairs(tmp_path, capsys):
    data = _hh_file(tmp_path / "pairs.jsonl", 120)
    out = tmp_path / "study"
    argv = ["--data", str(data), "--out", str(out), "--variants", "fedavg", "--num-supernodes", "2",
            *[a for s in TINY for a in ("--set", s)]]
    assert study_preferences.main(argv) == 0
    fed = json.loads((out / "fedavg" / "seed-0" / "summary.json").read_text())
    central = json.loads((out / "centralized" / "seed-0" / "server_eval.json").read_text())
    steps = sum(c["steps"] for r in map(json.loads, (out / "fedavg" / "seed-0" / "rounds.jsonl").read_text().splitlines())
                for c in r.get("clients", []))
    assert central["steps"] == steps > 0  # the same number of optimizer steps ...
    assert central["server_eval"]["n_pairs"] == fed["final"]["n_pairs"] == 12  # ... scored on the same test pairs
    table = (out / "results.md").read_text()
    assert "| fedavg | 1 |" in table and "| centralized | 1 |" in table and "vs centralized" in table
    row = next(line for line in table.splitlines() if line.startswith("| fedavg |"))
    diff = 100 * (fed["final"]["pairwise_accuracy"] - central["server_eval"]["pairwise_accuracy"])
    assert f"{diff:+.2f}" in row
    best = fed["best_by_validation"]  # round 0 or 1, picked on the validation pairs
    assert best["round"] in (0, 1) and "at the best round on validation" in table
    assert f"{best['pairwise_accuracy']:.4f}" in row
    summary = (out / "summary.md").read_text()  # the README's excerpt: the same figures
    assert f"{diff:+.2f}" in summary and f"{best['pairwise_accuracy']:.4f}" in summary
    assert "pairwise accuracy" in capsys.readouterr().out


def test_without_the_data_file_the_study_says_where_it_looked(tmp_path, capsys):
    assert study_preferences.main(["--data", str(tmp_path / "none.jsonl.gz"), "--out", str(tmp_path / "s")]) == 2
    assert "none.jsonl.gz" in capsys.readouterr().err and not (tmp_path / "s").exists()
