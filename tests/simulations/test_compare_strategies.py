"""The strategy comparison's table and plot from run directories (no simulations run)."""

import csv

import pytest

from fedgate.rundir import SUMMARY_FILE, RunDir
from simulations.compare_strategies import BASELINE, VARIANTS, run_config, summarize_run, write_results


def fake_run(path, aucs, up_bytes, pruned=()):
    run = RunDir(path)
    run.append_round({"round": 0, "server_eval": {"auc": 0.5, "f1": 0.8}, "params": {"percent": 0.5}})
    for i, auc in enumerate(aucs, start=1):
        run.append_round({"round": i, "server_eval": {"auc": auc, "f1": 0.8}, "bytes": {"array_up": up_bytes, "up": up_bytes + 10},
                          "strategy": {"pruned": list(pruned)}})
    run.write_json(SUMMARY_FILE, {"status": "completed", "wall_s": 12.0})
    return path


def test_table_compares_against_plain_fedavg_ab(tmp_path):
    rows = {BASELINE: summarize_run(fake_run(tmp_path / BASELINE, [0.55, 0.56], 2**20)),
            "fedavg": summarize_run(fake_run(tmp_path / "fedavg", [0.56, 0.575], 2**20)),
            "pruning": summarize_run(fake_run(tmp_path / "pruning", [0.56, 0.57], 2**19, pruned=["a", "b"]))}
    assert rows["pruning"]["uplink_mib"] == pytest.approx(1.0) and rows["pruning"]["pruned"] == 2
    md = write_results(tmp_path, rows)
    # one seed and no predictions: the differences come without an SE
    assert "| fedavg | 1 | 0.5750 |  | +1.50 |  |  | 0.8000 |" in md
    assert "| pruning | 1 | 0.5700 |  | +1.00 |  |  | 0.8000 | 1.00 | 0.50 | 2 |" in md
    with (tmp_path / "results.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [r["variant"] for r in table] == [BASELINE, "fedavg", "pruning"]
    assert (tmp_path / "auc_per_round.png").stat().st_size > 0


def test_failed_runs_are_not_summarized(tmp_path):
    RunDir(tmp_path).write_json(SUMMARY_FILE, {"status": "failed", "error": "boom"})
    with pytest.raises(RuntimeError, match="boom"):
        summarize_run(tmp_path)


def test_every_variant_is_a_valid_config():
    from pathlib import Path

    from fedgate.launch.simulation import resolve_config

    repo = Path(__file__).resolve().parents[2]
    for name in VARIANTS:
        cfg, _ = resolve_config(repo, [run_config(name, {"federation.rounds": 2})])
        assert cfg.federation.rounds == 2 and cfg.shards.alpha == 0.2
