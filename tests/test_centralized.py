"""``fedgate train`` and ``fedgate evaluate`` end to end on a tiny model (no downloads)."""

from __future__ import annotations

import json

import pytest

from fedgate.cli import main
from fedgate.state import load_state


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    rc = main(["train", "--out", str(out), "--backbone", "tiny-bert", "--max-steps", "6", "--quiet",
               "--set", "data.limit=200", "--set", "train.eval-every=3", "--set", "adapter.r=4"])
    assert rc == 0
    return out


@pytest.mark.integration
def test_train_writes_outputs_with_metrics_and_baselines(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["auc"] <= 1.0 and "f1" in metrics["test"]
    assert set(metrics["baselines"]) >= {"length", "tfidf_logreg", "frozen_probe"}
    assert any(k.startswith("auc_kind_") for k in metrics["test"])
    assert metrics["train"]["steps"] == 6 and len(metrics["history"]) == 2
    assert metrics["params"]["trainable"] > 0 and metrics["adapter_bytes"] > 0
    state, meta = load_state(run_dir / "adapters.safetensors")
    assert meta["config"]["model.backbone"] == "tiny-bert"
    assert all(".lora_" in k or "gate" in k or "struct" in k or k.startswith("head.") for k in state)
    config = json.loads((run_dir / "config.json").read_text())
    assert "torch" in config["versions"]
    lines = (run_dir / "test_predictions.csv").read_text().splitlines()
    assert lines[0].startswith("kind,true_helpfulness") and len(lines) == metrics["test"]["n"] + 1


@pytest.mark.integration
def test_evaluate_reproduces_the_training_run_test_metrics(run_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(run_dir), "--quiet", "--out", str(out)]) == 0
    again = json.loads(out.read_text())
    trained = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert again["auc"] == pytest.approx(trained["auc"], abs=1e-6)
    assert again["f1"] == pytest.approx(trained["f1"], abs=1e-6)


@pytest.mark.integration
def test_evaluate_with_noise_changes_inputs(run_dir, tmp_path):
    out = tmp_path / "noisy.json"
    assert main(["evaluate", str(run_dir), "--quiet", "--noise-rate", "0.2", "--out", str(out)]) == 0
    noisy = json.loads(out.read_text())
    assert noisy["noise_rate"] == 0.2 and noisy["n"] > 0


@pytest.mark.integration
def test_evaluate_on_real_helpsteer2_rows(run_dir, shared_data_dir, tmp_path):
    sample = shared_data_dir / "helpsteer2-sample"
    if not sample.is_dir():
        pytest.skip("helpsteer2 sample absent")
    out = tmp_path / "real.json"
    assert main(["evaluate", str(run_dir), "--quiet", "--data", str(sample), "--split", "validation",
                 "--out", str(out)]) == 0
    real = json.loads(out.read_text())
    assert real["n"] == 50 and real["source"] == str(sample)


def test_bad_config_key_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "run"), "--set", "adapter.rank=4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedgate: error: unknown config key 'adapter.rank'") and err.count("\n") == 1
