"""The report is rebuilt from a run directory's files alone."""

import csv
import json

import pytest

from fedgate.data import ATTRIBUTES
from fedgate.federated.report import round_table, write_report
from fedgate.rundir import RunDir


def _fake_run(path):
    """A run directory as the server writes it (two rounds, two adapters)."""
    run = RunDir(path)
    run.write_json("config.json", {"config": {"federation.strategy": "fedavg", "model.backbone": "tiny-bert",
                                              "shards.partitioner": "dirichlet", "shards.alpha": 0.5,
                                              "data.misaligned-threshold": 2}})
    params = {"trainable": 100, "backbone": 10000, "percent": 1.0, "backbone_bytes": 40000}
    run.append_round({"round": 0, "server_eval": {"auc": 0.5, "f1": 0.6}, "params": params})
    for r in (1, 2):
        run.append_round({
            "round": r, "server_eval": {"auc": 0.5 + r / 10, "f1": 0.7, "auc_noise_0.1": 0.55},
            "federated_eval": {"auc-mean": 0.6, "auc-worst": 0.5}, "clients": [{"node_id": 1}, {"node_id": 2}],
            "bytes": {"down": 4096, "up": 2048, "array_up_per_client": 1024},
            "gates": {"backbone.encoder.layer.1.attention.self.query": {"token_gate": 0.8, "structural_gate": 0.9},
                      "backbone.encoder.layer.1.output.dense": {"token_gate": 0.3, "structural_gate": 0.6}},
            "wall_s": {"round": 3.0}})
    run.write_json("summary.json", {"status": "completed", "rounds_completed": 2, "params": params})
    with (run.path / "test_predictions.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["kind", *[f"true_{a}" for a in ATTRIBUTES], *[f"pred_{a}" for a in ATTRIBUTES]])
        for true_h, pred_h in ((4, 3.5), (3, 3.0), (1, 1.2), (0, 2.5), (2, 2.0)):
            w.writerow(["real", true_h, 2, 2, 2, 2, pred_h, 2, 2, 2, 2])
    return run


def test_report_has_table_and_plots(tmp_path):
    run = _fake_run(tmp_path / "run")
    report = write_report(run.path).read_text()
    for name in ("metrics.png", "roc.png", "gates.png"):
        assert (run.path / "plots" / name).stat().st_size > 1000
    assert "| 2 | 0.7000 | 0.7000 | 0.6000 / 0.5000 | 2 | 1.0 | 4.0 | 3.0 |" in report
    assert "Status: **completed**" in report and "1.00% of the backbone" in report
    # ROC-AUC of the 5 rows: misaligned (H <= 2) scored by -pred: all misaligned above all aligned
    assert "ROC-AUC 1.0000" in report


def test_round_table_marks_missing_values():
    table = round_table([{"round": 3, "clients": []}])
    assert table.splitlines()[-1] == "| 3 | - | - | - | 0 | - | - | - |"


def test_report_needs_rounds(tmp_path):
    with pytest.raises(FileNotFoundError, match="no rounds.jsonl"):
        write_report(RunDir(tmp_path / "none").path)


def test_report_lists_the_baselines_next_to_the_final_model_and_scores_by_the_alignment_logit(tmp_path):
    run = _fake_run(tmp_path / "run")
    summary = run.read_json("summary.json")
    run.write_json("summary.json", {**summary, "final": {"auc": 0.7},
                                    "baselines": {"frozen_probe": 0.65, "frozen_probe_C": 0.01, "length": 0.55}})
    # a prediction file with the alignment logit: it, not predicted helpfulness, is the score
    with (run.path / "test_predictions.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["kind", *[f"true_{a}" for a in ATTRIBUTES], *[f"pred_{a}" for a in ATTRIBUTES], "alignment_logit"])
        for true_h, logit in ((4, 2.0), (3, 1.0), (1, 1.5), (0, -1.0)):  # one misaligned row above an aligned one
            w.writerow(["real", true_h, 2, 2, 2, 2, 2.0, 2, 2, 2, 2, logit])
    report = write_report(run.path).read_text()
    assert "| federated model (final) | 0.7000 |" in report and "| frozen_probe | 0.6500 |" in report
    assert "| length | 0.5500 |" in report and "frozen_probe_C" not in report
    assert "ROC-AUC 0.7500" in report  # 3 of the 4 (misaligned, aligned) pairs ordered right


@pytest.mark.parametrize("metric, expected", [
    ("auc", ["server ROC-AUC", "server F1", "ROC-AUC, noise 0.1", "clients' mean AUC", "worst client AUC"]),
    ("pairwise_accuracy", ["server pairwise accuracy", "pairwise accuracy, noise 0.1",
                           "clients' mean pairwise accuracy", "worst client pairwise accuracy"]),
])
def test_metric_plot_draws_the_headline_metric_its_noisy_copy_and_the_clients(tmp_path, monkeypatch, metric, expected):
    from fedgate.federated import report

    drawn = {}
    monkeypatch.setattr(report, "line_plot", lambda path, series, **kw: drawn.update(series=series, **kw))
    server = {metric: 0.6, f"{metric}_noise_0.1": 0.55} | ({"f1": 0.7} if metric == "auc" else {})
    rounds = [{"round": r, "server_eval": server, "federated_eval": {f"{metric}-mean": 0.6, f"{metric}-worst": 0.5}}
              for r in (0, 1)]
    report.plot_metrics(rounds, tmp_path / "m.png")
    assert list(drawn["series"]) == expected
    assert drawn["series"][expected[0]] == ([0, 1], [0.6, 0.6])
    assert drawn["dashed"] == expected[-2:]


def test_report_states_the_privacy_guarantee_after_each_round(tmp_path):
    _fake_run(tmp_path)
    run = RunDir(tmp_path)
    rounds = run.rounds()
    for r, eps in zip(rounds[1:], (1.5, 2.25)):
        r["privacy"] = {"mode": "central", "clip_norm": 0.5, "noise_multiplier": 1.1, "sample_rate": 1.0,
                        "delta": 1e-5, "epsilon": eps}
    (tmp_path / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))
    text = write_report(tmp_path).read_text()
    assert "## Privacy" in text and "noise multiplier 1.1" in text
    assert "Epsilon at delta 1e-05 after each private round: round 1 1.500, round 2 2.250." in text
