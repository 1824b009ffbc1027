"""The study scripts without running federations: every variant is a valid config, the
runner gives each variant its own client count, the standard tables and plots come out of
run directories, and the centralized upper bound trains and scores on a tiny model."""

import csv
import importlib
import json
from pathlib import Path

import numpy as np
import pytest

from fedgate.rundir import SUMMARY_FILE, RunDir
from fedgate.launch.simulation import resolve_config
from simulations.results import (combine_seeds, paired_difference, rows_from_dir, seed_dir, standard_results,
                                 summarize_run)
from simulations.study import NUM_SUPERNODES, SCALES, config_string, run_study

REPO = Path(__file__).resolve().parents[2]
STUDIES = ["study_noniid", "study_params", "study_data", "study_noise", "study_budget", "study_gates",
           "study_scale", "study_peft", "adversarial", "compare_strategies", "study_privacy"]


@pytest.mark.parametrize("scale", sorted(SCALES))
@pytest.mark.parametrize("name", STUDIES)
def test_every_variant_is_a_valid_config(name, scale):
    study = importlib.import_module(f"simulations.{name}")
    for variant, keys in study.VARIANTS.items():
        flat = {**study.COMMON, **SCALES[scale], **keys}
        cfg, _ = resolve_config(REPO, [config_string({k: v for k, v in flat.items() if k != NUM_SUPERNODES})])
        assert cfg.federation.rounds >= 1, variant


def fake_run(path, aucs, up_bytes=2**20, steps=10, percent=0.5, noise=None):
    run = RunDir(path)
    run.append_round({"round": 0, "server_eval": {"auc": 0.5, "f1": 0.8}, "params": {"percent": percent}})
    for i, auc in enumerate(aucs, start=1):
        ev = {"auc": auc, "f1": 0.8, **({"auc_noise_0.1": noise} if noise is not None else {})}
        run.append_round({"round": i, "server_eval": ev, "bytes": {"array_up": up_bytes, "up": up_bytes},
                          "clients": [{"steps": steps, "rss-peak-mb": 1000.0}], "wall_s": {"round": 5.0}})
    run.write_json(SUMMARY_FILE, {"status": "completed", "wall_s": 30.0})
    return path


def test_standard_table_baseline_noise_and_plots(tmp_path):
    fake_run(seed_dir(tmp_path, "a", 0), [0.55, 0.56], noise=0.54)
    fake_run(seed_dir(tmp_path, "b", 0), [0.56, 0.5725], percent=1.25, noise=0.55)
    (tmp_path / "variants.json").write_text(json.dumps({"a": "", "b": ""}))
    md = standard_results(tmp_path, rows_from_dir(tmp_path), baseline="a", title="t", reference=("upper", 0.6))
    assert "| variant | seeds | final ROC-AUC | vs a (points) | SE of the difference (points) | resolved" in md
    # one seed and no predictions: the difference without an SE, 2 rounds x 1 MiB up
    assert "| b | 1 | 0.5725 | +1.25 |  |  | 0.8000 | 1.250 | 2.00 | 30 | 0.5500 |" in md
    with (tmp_path / "results.csv").open() as f:
        assert [r["variant"] for r in csv.DictReader(f)] == ["a", "b"]
    for png in ("final_auc.png", "auc_per_round.png"):
        assert (tmp_path / png).stat().st_size > 0


def test_seeds_are_averaged_and_differences_paired_per_seed(tmp_path):
    base = {0: 0.60, 1: 0.62, 2: 0.64}
    other = {0: 0.61, 1: 0.64, 2: 0.66}  # per-seed differences 1, 2, 2 points
    for s in base:
        fake_run(seed_dir(tmp_path, "base", s), [0.5, base[s]])
        fake_run(seed_dir(tmp_path, "other", s), [0.5, other[s]])
    (tmp_path / "variants.json").write_text(json.dumps({"base": "", "other": ""}))
    rows = rows_from_dir(tmp_path)
    assert rows["base"]["seeds"] == 3 and rows["base"]["auc"] == pytest.approx(0.62)
    assert rows["base"]["auc_se"] == pytest.approx(0.02 / np.sqrt(3))  # sd 0.02 over 3 seeds
    assert rows["other"]["auc_per_round"] == pytest.approx([0.5, 0.5, (0.61 + 0.64 + 0.66) / 3])
    diff, se, how = paired_difference(tmp_path, rows, "other", "base")
    assert how == "seeds" and diff == pytest.approx(5 / 3)
    assert se == pytest.approx(np.std([1, 2, 2], ddof=1) / np.sqrt(3))  # 0.33: resolved at 2 SE
    md = standard_results(tmp_path, rows, baseline="base")
    assert f"| other | 3 | {(0.61 + 0.64 + 0.66) / 3:.4f} | {rows['other']['auc_se']:.4f} | +1.67 | 0.33 | yes |" in md
    per_round = (tmp_path / "per_round.md").read_text().splitlines()
    assert per_round[0] == "| variant | seed | round 0 | 1 | 2 |"
    assert "| other | 1 | 0.5000 | 0.5000 | 0.6400 |" in per_round and len(per_round) == 2 + 6


def test_a_difference_inside_two_standard_errors_is_not_resolved(tmp_path):
    rows = {n: combine_seeds({s: {"auc": a, "f1": 0.8} for s, a in enumerate(aucs)})
            for n, aucs in (("base", [0.60, 0.62, 0.64]), ("other", [0.62, 0.61, 0.65]))}
    diff, se, _ = paired_difference(tmp_path, rows, "other", "base")  # differences 2, -1, 1 points
    assert diff == pytest.approx(2 / 3) and abs(diff) < 2 * se
    from simulations.results import resolved
    assert resolved(diff, se) == "no" and resolved(2.0, 0.5) == "yes" and resolved(1.0, float("nan")) == ""


def test_each_variant_gets_its_own_client_count_and_every_seed_its_own_run(tmp_path, monkeypatch):
    calls = []

    def fake_simulate(run_config, *, num_supernodes, out, timeout):
        calls.append((run_config[0], num_supernodes, out))
        return 0, fake_run(out, [0.6])

    monkeypatch.setattr("simulations.study.simulate", fake_simulate)
    variants = {"small": {"federation.rounds": 1, NUM_SUPERNODES: 2}, "default": {"federation.rounds": 1}}
    rows = run_study(tmp_path, variants, study="simulations.study_scale", num_supernodes=4)
    assert [n for _, n, _ in calls] == [2, 4] and set(rows) == {"small", "default"}
    assert all(NUM_SUPERNODES not in c and c.endswith("train.seed=0") for c, _, _ in calls)
    assert calls[0][2] == tmp_path / "small" / "seed-0"
    assert json.loads((tmp_path / "study.json").read_text())["num_supernodes"] == {"small": 2, "default": 4}
    run_study(tmp_path, variants, study="simulations.study_scale", num_supernodes=4)
    assert len(calls) == 2  # both completed with the same config and client count: reused
    run_study(tmp_path, variants, study="simulations.study_scale", num_supernodes=5)
    assert calls[-1][1] == 5 and len(calls) == 3  # another client count is another run
    rows = run_study(tmp_path, variants, study="simulations.study_scale", num_supernodes=5, seeds=(0, 1))
    assert len(calls) == 5 and calls[-1][0].endswith("train.seed=1")  # seed 1 of both; seed 0 reused
    assert rows["small"]["seeds"] == 2 and (tmp_path / "default" / "seed-1" / SUMMARY_FILE).is_file()


def test_noniid_report_draws_the_centralized_bound(tmp_path):
    from simulations import study_noniid

    for name, aucs in (("iid", [0.58]), ("dirichlet-0.1", [0.55])):
        fake_run(seed_dir(tmp_path, name, 0), aucs)
    (tmp_path / "variants.json").write_text(json.dumps({"iid": "", "dirichlet-0.1": ""}))
    seed_dir(tmp_path, "centralized", 0).mkdir(parents=True)
    (seed_dir(tmp_path, "centralized", 0) / "server_eval.json").write_text(
        json.dumps({"steps": 20, "server_eval": {"auc": 0.6}}))
    md = study_noniid.report(tmp_path)
    assert "| dirichlet-0.1 | 0.5500 | -5.00 |" in md  # vs centralized 0.6, in points
    assert (tmp_path / "vs_centralized.csv").is_file()


def test_noniid_report_gives_the_share_of_fedavgs_cost_a_rule_wins_back(tmp_path):
    from simulations import study_noniid

    runs = {"iid": [0.70, 0.72, 0.71], "dirichlet-0.1": [0.64, 0.66, 0.67],  # cost 6, 6, 4 points
            "dirichlet-0.1-fedprox": [0.67, 0.68, 0.69]}  # gain 3, 2, 2 points
    for name, aucs in runs.items():
        for seed, auc in enumerate(aucs):
            fake_run(seed_dir(tmp_path, name, seed), [0.6, auc])
    (tmp_path / "variants.json").write_text(json.dumps(dict.fromkeys(runs, "")))
    md = study_noniid.report(tmp_path)
    cost_se, gain_se = np.std([6, 6, 4], ddof=1) / np.sqrt(3), np.std([3, 2, 2], ddof=1) / np.sqrt(3)
    # 7/3 of 16/3 points won back: 44%; both differences are over 2 SE
    assert (f"| dirichlet-0.1-fedprox | dirichlet-0.1 | +5.33 | {cost_se:.2f} | yes | +2.33 | {gain_se:.2f} | yes | 44% |"
            in md)
    assert "scaffold" not in md.split("share of the cost won back")[1]  # not run: no row


def test_noniid_report_gives_no_share_of_a_cost_inside_the_noise(tmp_path):
    from simulations import study_noniid

    runs = {"iid": [0.70, 0.66, 0.71], "dirichlet-0.1": [0.66, 0.67, 0.68],  # cost 4, -1, 3: 2 +- 1.5
            "dirichlet-0.1-fedprox": [0.67, 0.68, 0.69]}
    for name, aucs in runs.items():
        for seed, auc in enumerate(aucs):
            fake_run(seed_dir(tmp_path, name, seed), [0.6, auc])
    (tmp_path / "variants.json").write_text(json.dumps(dict.fromkeys(runs, "")))
    row = [line for line in study_noniid.report(tmp_path).splitlines() if line.startswith("| dirichlet-0.1-fedprox |")]
    assert row[-1].endswith("| no | +1.00 | 0.00 | yes | - |")  # cost unresolved: no share


def test_gate_study_pairs_gated_against_plain_in_each_condition_that_ran(tmp_path):
    from simulations.study_gates import gates_vs_plain

    def rows_of(aucs, noisy):
        return combine_seeds({s: {"auc": a, "f1": 0.8, "auc_noise_0.2": n} for s, (a, n) in enumerate(zip(aucs, noisy))})

    rows = {"plain-lora": rows_of([0.70, 0.71, 0.72], [0.66, 0.67, 0.68]),
            "both-gates": rows_of([0.71, 0.71, 0.72], [0.69, 0.70, 0.70])}  # clean +1, 0, 0; noisy +3, +3, +2
    md = gates_vs_plain(tmp_path, rows)
    clean_se, noisy_se = np.std([1, 0, 0], ddof=1) / np.sqrt(3), np.std([3, 3, 2], ddof=1) / np.sqrt(3)
    assert f"| clean | 3 | 0.7100 | 0.7133 | +0.33 | {clean_se:.2f} | no |" in md
    assert f"| 20% of test inputs noised | 3 | 0.6700 | 0.6967 | +2.67 | {noisy_se:.2f} | yes |" in md
    assert "flipped" not in md  # those variants did not run
    assert (tmp_path / "gates_vs_plain.csv").is_file()


def test_privacy_study_pairs_each_epsilon_with_its_methods_clean_run_and_compares_the_methods(tmp_path):
    from simulations.study_privacy import degradation

    aucs = {"fedavg-eps-inf": [0.70, 0.72, 0.71], "fedavg-eps-8": [0.60, 0.63, 0.61],  # drops 10, 9, 10
            "ffa-eps-inf": [0.69, 0.70, 0.70], "ffa-eps-8": [0.65, 0.66, 0.67]}  # drops 4, 4, 3
    rows = {n: combine_seeds({s: {"auc": a, "f1": 0.8} for s, a in enumerate(v)}) for n, v in aucs.items()}
    md = degradation(tmp_path, rows)
    fedavg_se = np.std([10, 9, 10], ddof=1) / np.sqrt(3)
    gap_se = np.std([-6, -5, -7], ddof=1) / np.sqrt(3)  # FFA's drop minus FedAvg's, per seed
    assert f"| 8 | 0.6133 | +9.67 | {fedavg_se:.2f} | 0.6600 | +3.67 |" in md
    assert f"| -6.00 | {gap_se:.2f} | yes |" in md
    assert "| 2 |" not in md  # epsilon 2 did not run: no row


@pytest.mark.integration
def test_centralized_bound_trains_the_given_steps_and_scores_on_the_server_rows(tmp_path):
    from simulations.study_noniid import centralized_bound

    flat = {"model.backbone": "tiny-bert", "server.baselines": False, "data.limit": 120, "server.eval-limit": 30, "train.batch-size": 8,
            "server.noise-rates": ""}
    result = centralized_bound(flat, 3, tmp_path / "c")
    assert result["steps"] == 3 and 0.0 <= result["server_eval"]["auc"] <= 1.0
    assert json.loads((tmp_path / "c" / "server_eval.json").read_text())["steps"] == 3


def test_aggregation_benchmark_times_every_strategy(tmp_path):
    from simulations.bench_aggregation import STRATEGIES, main

    assert main(["--set", 'model.backbone="tiny-bert"', "--clients", "3,5", "--repeats", "1",
                 "--out", str(tmp_path)]) == 0
    with (tmp_path / "aggregation.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["strategy"] for r in rows] == list(STRATEGIES)
    assert all(float(r["5 clients"]) > 0 for r in rows)


def _predictions(path, helpfulness, scores):
    path.mkdir(parents=True, exist_ok=True)
    with (path / "test_predictions.csv").open("w") as f:
        f.write("kind,true_helpfulness,pred_helpfulness\n")
        f.writelines(f"real,{h},{s}\n" for h, s in zip(helpfulness, scores))


def test_auc_difference_se_is_zero_for_identical_runs_and_refuses_other_rows(tmp_path):
    from simulations.results import auc_difference_se

    rng = np.random.default_rng(0)
    h = rng.integers(0, 5, 200)
    scores = h + rng.normal(0, 2, 200)
    _predictions(tmp_path / "a", h, scores)
    _predictions(tmp_path / "b", h, scores)
    _predictions(tmp_path / "c", h, scores + rng.normal(0, 2, 200))
    _predictions(tmp_path / "d", 4 - h, scores)
    assert auc_difference_se(tmp_path / "a", tmp_path / "b") == 0.0
    assert 0.5 < auc_difference_se(tmp_path / "a", tmp_path / "c") < 10.0  # points
    with pytest.raises(ValueError, match="not scored on the same test rows"):
        auc_difference_se(tmp_path / "a", tmp_path / "d")


def test_one_seed_gets_a_paired_bootstrap_se_against_the_baseline(tmp_path):
    from simulations.results import auc_difference_se

    rng = np.random.default_rng(1)
    h = rng.integers(0, 5, 200)
    for name, noise in (("base", 1.0), ("other", 2.0)):
        fake_run(seed_dir(tmp_path, name, 0), [0.55])
        _predictions(seed_dir(tmp_path, name, 0), h, h + rng.normal(0, noise, 200))
    (tmp_path / "variants.json").write_text(json.dumps({"base": "", "other": ""}))
    md = standard_results(tmp_path, rows_from_dir(tmp_path), baseline="base")
    se = auc_difference_se(seed_dir(tmp_path, "other", 0), seed_dir(tmp_path, "base", 0))
    assert "| variant | seeds | final ROC-AUC | vs base (points) | SE of the difference (points) |" in md
    assert f"| other | 1 | 0.5500 | +0.00 | {se:.2f} | no | 0.8000 |" in md and se > 0
    assert "| base | 1 | 0.5500 |  |  |  | 0.8000 |" in md


def test_lost_client_updates_get_a_column_only_when_there_are_some(tmp_path):
    rows = {"clean": summarize_run(fake_run(tmp_path / "clean", [0.55]))}  # rows of one seed, as summarize gives them
    assert "lost client updates" not in standard_results(tmp_path, rows)
    lossy = fake_run(tmp_path / "lossy", [0.55, 0.56])
    records = RunDir(lossy).rounds()
    (lossy / "rounds.jsonl").write_text("".join(
        json.dumps({**r, "failures": [{"node_id": 7, "stage": "train", "reason": "DataError"}] if r["round"] else [],
                    "dropped": [{"node_id": 8, "stage": "train", "reason": "timeout"}] if r["round"] == 2 else []}) + "\n"
        for r in records))
    rows["lossy"] = summarize_run(lossy)
    md = standard_results(tmp_path, rows)
    assert md.splitlines()[0].endswith("| wall s | lost client updates |")
    assert md.splitlines()[3].startswith("| lossy |") and md.splitlines()[3].endswith("| 3 |")  # 2 failed + 1 dropped


def test_combined_seeds_keep_lists_they_share_and_average_curves():
    rows = combine_seeds({0: {"auc": 0.6, "flipped_partitions": [2], "auc_per_round": [0.5, 0.6]},
                          1: {"auc": 0.7, "flipped_partitions": [2], "auc_per_round": [0.5, 0.7]}})
    assert rows["flipped_partitions"] == [2] and isinstance(rows["flipped_partitions"][0], int)
    assert rows["auc_per_round"] == pytest.approx([0.5, 0.65]) and rows["seeds"] == 2


def test_compare_lora_settings_are_valid_configs_for_every_rule():
    from fedgate import strategies
    from fedgate.config import FedgateConfig
    from simulations.compare_lora import COMMON, SETTINGS, main, variants

    for setting in SETTINGS:
        found = variants(setting)
        assert found, setting
        for name, keys in found.items():
            cfg = FedgateConfig.from_flat({**COMMON, **keys})
            assert strategies.check(cfg).federation.strategy == name.removesuffix("-pruning")
    assert set(variants("het-ranks")) == {"fedavg-ab", "exact", "hetlora", "fedex-lora", "flora", "lora-fair",
                                          "hetlora-pruning"}
    assert variants("het-ranks")["hetlora-pruning"]["train.rank-prune-decay"] == 0.9
    assert main(["--setting", "nope"]) == 2
