"""What every run writes beside its weights: the package versions it ran with and its
test predictions (rated rows or preference pairs)."""

from __future__ import annotations

import csv
import platform
from importlib import metadata
from pathlib import Path

import numpy as np

from fedgate.batching import EncodedSplit, is_pairs
from fedgate.data import ATTRIBUTES


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("fedgate", "torch", "transformers", "datasets", "flwr", "deepspeed", "peft", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def write_predictions(path: Path, split: EncodedSplit, pred: np.ndarray) -> None:
    if is_pairs(split):
        score = pred[:, -1]
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["pair", "chosen_score", "rejected_score"])
            for i, (c, r) in enumerate(zip(score[0::2], score[1::2])):
                w.writerow([i, f"{c:.4f}", f"{r:.4f}"])
        return
    labels = split.labels.numpy().astype(int)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        extra = ["alignment_logit"] if pred.shape[1] > len(ATTRIBUTES) else []
        w.writerow(["kind", *[f"true_{a}" for a in ATTRIBUTES], *[f"pred_{a}" for a in ATTRIBUTES], *extra])
        for kind, y, p in zip(split.kinds, labels, pred):
            w.writerow([kind, *y.tolist(), *(f"{v:.4f}" for v in p)])
