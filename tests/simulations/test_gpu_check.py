"""The GPU check script: without a GPU it says so and runs nothing; with ``--allow-cpu`` its
rows (a DeepSpeed ZeRO-3 step on a tiny decoder in a fresh process) and its 2-client
federation run for real and land in one table; the table's ratios are each row's peak over its
group's fp32 row."""

import json

import pytest
import torch

from simulations import gpu_check


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_says_so_and_runs_nothing(monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "run_row", lambda *a, **k: pytest.fail("ran a row without --allow-cpu"))
    assert gpu_check.main([]) == 0
    assert "no CUDA GPU" in capsys.readouterr().out


def test_unknown_rows_are_refused_with_the_choices(capsys):
    with pytest.raises(SystemExit):
        gpu_check.main(["--rows", "decoder/zero4"])
    assert "decoder/zero4" in capsys.readouterr().err


def test_the_table_gives_each_rows_peak_over_its_groups_fp32_row():
    results = {"decoder/fp32": {"step_s": 0.5, "peak_mb": 400.0, "loss": 1.0},
               "decoder/zero3": {"step_s": 0.7, "peak_mb": 100.0, "loss": 1.0},
               "encoder/4bit": {"error": "refused: reason"},
               "federation": {"wall_s": 30.0, "auc": 0.61, "clients": 2, "failures": 0}}
    table = gpu_check.format_table(results, "cuda", {"decoder": "d", "encoder": "e"})
    assert "| decoder (d) | ZeRO-3 | 0.700 | 100 | 0.25 |" in table
    assert "| encoder (e) | 4-bit NF4 frozen backbone | - | - | - | refused: reason |" in table
    assert "final ROC-AUC 0.6100, 2 clients ok" in table and "max_memory_allocated" in table


@pytest.mark.integration
def test_on_the_cpu_a_zero3_row_and_the_federation_run_for_real(tmp_path, capsys):
    out = tmp_path / "check.json"
    assert gpu_check.main(["--allow-cpu", "--decoder", "tiny-llama", "--rows", "decoder/zero3", "--steps", "1",
                           "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    row, fed = results["decoder/zero3"], results["federation"]
    assert row["variant"] == "zero3" and row["peak_mb"] > 0 and row["step_s"] > 0 and row["loss"] == row["loss"]
    assert fed["clients"] == 2 and fed["failures"] == 0 and 0.0 <= fed["auc"] <= 1.0
    assert "| decoder (tiny-llama) | ZeRO-3 |" in capsys.readouterr().out
