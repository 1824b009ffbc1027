"""A federated run in the tracking tools people already use, next to its own JSONL record.

``server.tensorboard=true`` writes TensorBoard event files to ``RUN_DIR/tensorboard``
(``torch.utils.tensorboard``; needs the ``tensorboard`` package): per round the server's
test metrics (``server/auc``, ``server/f1``, ``server/auc_noise_0.1``, ...), the clients'
mean training loss, bytes up and down, wall time, clients ok and failed, each adapter's
structural and token gate as scalars and as histograms over layers, and at the end the
final ROC curve. ``server.mlflow=true`` logs the same scalars and the run config to an MLflow
run (needs ``mlflow``, ``pip install 'fedgate[tracking]'``; the tracking URI is MLflow's own
setting, ``MLFLOW_TRACKING_URI``, by default a local SQLite store ``RUN_DIR/mlflow.db``). Both
are off by default and never needed: ``rounds.jsonl``, ``summary.json`` and the report stay.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

log = logging.getLogger(__name__)
TENSORBOARD_DIR = "tensorboard"


def round_scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of one round record worth plotting, by tag."""
    out: dict[str, float] = {}
    for key, value in (record.get("server_eval") or {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"server/{key}"] = float(value)
    train = record.get("train") or {}
    if "train-loss" in train:
        out["clients/train_loss"] = float(train["train-loss"])
    for key in ("local-auc", "local-pairwise-accuracy"):
        if key in train:
            out[f"clients/{key.replace('-', '_')}"] = float(train[key])
    if record.get("round", 0) > 0:
        out["clients/ok"] = float(len(record.get("clients") or []))
        out["clients/failed"] = float(len(record.get("failures") or []) + len(record.get("dropped") or []))
    for key in ("up", "down"):
        if key in (record.get("bytes") or {}):
            out[f"bytes/{key}_mib"] = record["bytes"][key] / 2**20
    if "round" in (record.get("wall_s") or {}):
        out["time/round_s"] = float(record["wall_s"]["round"])
    for name, gates in (record.get("gates") or {}).items():
        for kind in ("structural_gate", "token_gate"):
            if isinstance(gates.get(kind), (int, float)):
                out[f"gates/{kind}/{name}"] = float(gates[kind])
    return out


class Tracker:
    """Sends each round record to the enabled tools; a tool that fails is said once and
    then left alone: tracking never stops a federation."""

    def __init__(self, run_dir: Path, *, tensorboard: bool = False, mlflow: bool = False,
                 config: Mapping[str, Any] | None = None) -> None:
        self.tb = self.mlflow = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError("server.tensorboard=true needs the tensorboard package: "
                                  "pip install 'fedgate[tracking]'") from e
            self.tb = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR))
        if mlflow:
            try:
                import mlflow as mlf
            except ImportError as e:
                raise ImportError("server.mlflow=true needs mlflow: pip install 'fedgate[tracking]'") from e
            if "MLFLOW_TRACKING_URI" not in os.environ:
                mlf.set_tracking_uri(f"sqlite:///{(run_dir / 'mlflow.db').resolve()}")
            mlf.set_experiment("fedgate")
            self.mlflow = mlf.start_run(run_name=run_dir.name)
            if config:
                mlf.log_params({k: str(v)[:250] for k, v in config.items()})

    def round(self, record: Mapping[str, Any]) -> None:
        step = int(record.get("round", 0))
        scalars = round_scalars(record)
        if self.tb is not None:
            for tag, value in scalars.items():
                self.tb.add_scalar(tag, value, step)
            for kind in ("structural_gate", "token_gate"):
                values = [g[kind] for g in (record.get("gates") or {}).values() if isinstance(g.get(kind), float)]
                if values:
                    self.tb.add_histogram(f"gates/{kind}_over_layers", np.asarray(values), step)
            self.tb.flush()
        if self.mlflow is not None:
            import mlflow

            mlflow.log_metrics({t.replace("/", ".").replace(":", "_"): v for t, v in scalars.items()}, step=step)

    def final_roc(self, y_misaligned: np.ndarray, score: np.ndarray, step: int) -> None:
        """The final ROC curve on the test rows, as a TensorBoard figure."""
        if self.tb is None or not y_misaligned.any() or y_misaligned.all():
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from fedgate.metrics import roc_auc, roc_curve

        fpr, tpr = roc_curve(y_misaligned, score)
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.plot(fpr, tpr, label=f"AUC {roc_auc(y_misaligned, score):.3f}")
        ax.plot([0, 1], [0, 1], "--", color="grey")
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title="final ROC (test)")
        ax.legend(loc="lower right")
        self.tb.add_figure("server/final_roc", fig, step)
        plt.close(fig)

    def close(self, failed: bool = False) -> None:
        """Flush and close the event files and end the MLflow run (as FAILED when ``failed``);
        a second call does nothing."""
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.mlflow is not None:
            import mlflow

            mlflow.end_run(status="FAILED" if failed else "FINISHED")
            self.mlflow = None
