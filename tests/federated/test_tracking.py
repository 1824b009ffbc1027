"""Tracking: which numbers of a round record reach TensorBoard, read back with its own reader."""

import numpy as np
import pytest

from fedgate.federated.tracking import Tracker, round_scalars

RECORD = {"round": 1, "server_eval": {"auc": 0.7, "f1": 0.8, "auc_noise_0.1": 0.65, "n": 400},
          "train": {"train-loss": 0.9, "local-auc": 0.68}, "clients": [{}, {}, {}], "failures": [{}],
          "dropped": [], "bytes": {"up": 2 * 2**20, "down": 4 * 2**20}, "wall_s": {"round": 60.0},
          "gates": {"layer.4.query": {"structural_gate": 0.88, "token_gate": 0.7}}}


def test_round_scalars_name_every_number_worth_plotting():
    s = round_scalars(RECORD)
    assert s["server/auc"] == 0.7 and s["server/auc_noise_0.1"] == 0.65 and s["server/n"] == 400
    assert s["clients/train_loss"] == 0.9 and s["clients/ok"] == 3 and s["clients/failed"] == 1
    assert s["bytes/up_mib"] == 2.0 and s["time/round_s"] == 60.0
    assert s["gates/structural_gate/layer.4.query"] == 0.88


def test_tensorboard_files_read_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tracker = Tracker(tmp_path, tensorboard=True)
    tracker.round({**RECORD, "round": 0, "train": None})
    tracker.round(RECORD)
    y = np.array([1, 0, 1, 0, 1])
    tracker.final_roc(y.astype(bool), np.array([0.9, 0.1, 0.8, 0.3, 0.4]), step=1)
    tracker.close()
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert [(e.step, e.value) for e in events.Scalars("server/auc")] == [(0, pytest.approx(0.7)), (1, pytest.approx(0.7))]
    assert [e.step for e in events.Scalars("clients/train_loss")] == [1]
    assert "server/final_roc" in events.Tags()["images"]
    tracker.close()  # closing twice is harmless


def test_mlflow_without_the_package_says_how_to_get_it(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_mlflow(name, *args, **kwargs):
        if name == "mlflow":
            raise ImportError("No module named 'mlflow'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mlflow)
    with pytest.raises(ImportError, match=r"pip install 'fedgate\[tracking\]'"):
        Tracker(tmp_path, mlflow=True)


def test_mlflow_run_holds_the_round_metrics_and_the_config(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")  # the 'tracking' extra
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = Tracker(tmp_path, mlflow=True, config={"federation.strategy": "fedavg", "adapter.r": 8})
    run_id = tracker.mlflow.info.run_id
    tracker.round({**RECORD, "round": 0, "train": None})
    tracker.round(RECORD)
    tracker.close()
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}")
    history = client.get_metric_history(run_id, "server.auc")
    assert [(m.step, m.value) for m in history] == [(0, pytest.approx(0.7)), (1, pytest.approx(0.7))]
    assert client.get_run(run_id).data.params["federation.strategy"] == "fedavg"
    assert client.get_run(run_id).info.status == "FINISHED"
