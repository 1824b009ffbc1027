"""Server-side evaluation and run outputs (``[server]``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerConfig:
    """Server-side evaluation and run outputs."""

    eval_every: int = 1  # evaluate the global model every k rounds (the last round always); 0 = last only
    eval_limit: int = 0  # evaluate on at most this many held-out rows (0 = all)
    noise_rates: tuple[float, ...] = (0.1, 0.2)  # also report ROC-AUC with this much semantic noise
    noise_every: int = 0  # those noisy AUCs every k rounds; 0 = before round 1 and after the last only
    output_dir: str = ""  # run directory; empty = runs/fed-<time> under the working directory
    resume_from: str = ""  # a run directory (or its checkpoint) to continue from the next round
    report: bool = True  # write report.md and plots at the end
    baselines: bool = True  # fit the cheap baselines on the pooled training rows (summary.json "baselines")
    tensorboard: bool = False  # TensorBoard event files in RUN_DIR/tensorboard (needs tensorboard)
    mlflow: bool = False  # an MLflow run (needs mlflow; MLFLOW_TRACKING_URI or RUN_DIR/mlflow.db)

    def __post_init__(self) -> None:
        if self.eval_every < 0:
            raise ValueError(f"server.eval-every must be >= 0, got {self.eval_every}")
        if self.noise_every < 0:
            raise ValueError(f"server.noise-every must be >= 0, got {self.noise_every}")
        if self.eval_limit < 0:
            raise ValueError(f"server.eval-limit must be >= 0 (0 = all rows), got {self.eval_limit}")
        bad = [r for r in self.noise_rates if not 0.0 < r <= 1.0]
        if bad:
            raise ValueError(f"server.noise-rates must be in (0, 1], got {bad}")
