"""The preference benchmark's table from finished runs: mean ± SE over seeds, each seed's
interval, the baselines; a missing data file is said, not crashed on."""

import json

import pytest

from simulations.bench_preferences import main, summarize


def _metrics(acc, low, high, probe):
    return {"test": {"pairwise_accuracy": acc, "pairwise_accuracy_low": low, "pairwise_accuracy_high": high},
            "test_at_step0": {"pairwise_accuracy": probe},
            "baselines": {"length": 0.55, "length_longer_wins": 0.0, "tfidf_logreg": 0.58, "frozen_probe": probe},
            "data": {"train": 1221, "validation": 153, "test": 153},
            "train": {"steps": 78, "examples_seen": 78 * 64}, "total_wall_s": 300.0, "bench_wall_s": 310.0}


def test_summary_gives_mean_and_se_over_seeds(tmp_path):
    for seed, acc in ((0, 0.60), (1, 0.62), (2, 0.64)):
        (tmp_path / f"seed-{seed}").mkdir()
        (tmp_path / f"seed-{seed}" / "metrics.json").write_text(json.dumps(_metrics(acc, acc - 0.08, acc + 0.08, 0.57)))
    md = summarize(tmp_path)
    assert "| test pairwise accuracy (95% CI over test pairs) | 0.6000 (0.520-0.680) |" in md
    assert "| 0.6200 ± 0.0115 |" in md  # sd 0.02 over 3 seeds
    assert "| baseline: length | 0.5500 | 0.5500 | 0.5500 | 0.5500 ± 0.0000 |" in md
    assert "The length rule picks the shorter reply" in md and "32 pairs" in md
    assert (tmp_path / "preferences.md").read_text() == md


def test_absent_data_is_said_in_one_line(tmp_path, capsys):
    assert main(["--data", str(tmp_path / "absent.jsonl.gz"), "--out", str(tmp_path / "out")]) == 1
    assert "absent" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="no finished runs"):
        summarize(tmp_path)


def test_overrides_reach_every_seed_and_a_folder_keeps_one_set_of_them(tmp_path, monkeypatch, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text("")
    seen = []

    def fake_run(data_path, out, seed, overrides=None):
        seen.append((seed, overrides))
        out.mkdir(parents=True, exist_ok=True)
        m = _metrics(0.6, 0.5, 0.7, 0.55)
        (out / "metrics.json").write_text(json.dumps(m))
        return m

    monkeypatch.setattr("simulations.bench_preferences.run_seed", fake_run)
    out = tmp_path / "trial"
    args = ["--data", str(data), "--out", str(out), "--seeds", "0,1"]
    assert main([*args, "--set", "model.pairing=joint", "--set", "train.epochs=4"]) == 0
    assert seen == [(0, {"model.pairing": "joint", "train.epochs": 4}), (1, {"model.pairing": "joint", "train.epochs": 4})]
    with pytest.raises(SystemExit):  # the same folder with other overrides would mix two recipes
        main([*args, "--set", "model.pairing=separate"])
    assert "holds runs with other overrides" in capsys.readouterr().err
