"""The learning benchmark's table: mean ± SE over seeds, paired differences to ``fed``."""

import math

import pytest

from simulations.bench_learning import table


def _row(auc, **kw):
    return {"auc": auc, "auc_step0": 0.6, "steps": 100, "wall_s": 60.0, **kw}


def test_table_gives_mean_and_standard_error_and_the_paired_difference():
    results = {
        "fed": {0: _row(0.70, rising=True, baseline_frozen_probe=0.64), 1: _row(0.72, rising=True), 2: _row(0.74, rising=False)},
        "fed-head-only": {0: _row(0.66), 1: _row(0.69), 2: _row(0.69)},
    }
    md = table(results)
    fed, head = md.splitlines()[2], md.splitlines()[3]
    se = math.sqrt(((0.70 - 0.72) ** 2 + (0.74 - 0.72) ** 2) / 2) / math.sqrt(3)  # sample SD / sqrt(n)
    assert f"| fed | 3 | 0.7200 ± {se:.4f} |" in fed and "| 2/3 |" in fed and "| 0.6400 |" in fed
    # per-seed differences -4, -3, -5 points: mean -4.00, SE 0.58
    assert "| -4.00 ± 0.58 |" in head


def test_a_row_without_runs_is_left_out():
    assert "central" not in table({"central": {}, "fed": {0: _row(0.7)}})


def test_noisy_auc_is_paired_against_fed_and_a_missing_value_is_skipped():
    results = {
        "fed": {0: _row(0.70, auc_noise=0.68, uplink_mib=8.0), 1: _row(0.72, auc_noise=0.70, uplink_mib=8.0)},
        "fed-plain-lora": {0: _row(0.70, auc_noise=0.65, uplink_mib=7.5), 1: _row(0.71, auc_noise=None)},
    }
    plain = table(results).splitlines()[3].split(" | ")
    # noisy AUC: only seed 0 has both values: 0.65 - 0.68 = -3.00 points, one pair, no SE
    assert plain[11] == "0.6500" and plain[12] == "-3.00"
    assert plain[13] == "7.50"


def test_a_row_on_other_rows_is_not_paired_with_fed():
    results = {"fed": {0: _row(0.70), 1: _row(0.72)}, "fed-smollm2": {0: _row(0.60), 1: _row(0.64)},
               "fed-4bit": {0: _row(0.69), 1: _row(0.70)}}
    lines = table(results).splitlines()
    decoder, quantized = lines[3].split(" | "), lines[4].split(" | ")
    assert decoder[0] == "| fed-smollm2" and decoder[4] == "-"  # 800 rows of its own: no paired difference
    assert quantized[0] == "| fed-4bit" and quantized[4] == "-1.50 ± 0.50"  # fed's rows: paired


def test_wall_time_runs_from_the_last_superlink_start_to_the_end_of_the_run_log(tmp_path):
    import os
    from datetime import datetime

    from simulations.bench_learning import launcher_wall_s

    link = tmp_path / "flwr-home" / "superlink" / "superlink.log"
    link.parent.mkdir(parents=True)
    link.write_text(  # an interrupted attempt at 05:18, the attempt that finished at 05:39
        "WARNING flwr 2026-12-02 05:18:23,144 | flower_superlink.py:540 | Option `--insecure` was set.\n"
        "INFO flwr 2026-12-02 05:18:23,144 | flower_superlink.py:472 | Starting Flower SuperLink\n"
        "INFO flwr 2026-12-02 05:20:00,000 | run 1 stopped\n"
        "WARNING flwr 2026-12-02 05:39:26,015 | flower_superlink.py:540 | Option `--insecure` was set.\n"
        "INFO flwr 2026-12-02 05:39:26,016 | flower_superlink.py:472 | Starting Flower SuperLink\n")
    log = tmp_path / "simulation.log"
    log.write_text("round 4/4\n")
    end = datetime(2026, 12, 2, 5, 56, 26, 16000).timestamp()  # 17 minutes after the second start
    os.utime(log, (end, end))
    assert launcher_wall_s(tmp_path) == pytest.approx(17 * 60, abs=1e-3)
    (tmp_path / "simulation.log").unlink()
    assert launcher_wall_s(tmp_path) is None
