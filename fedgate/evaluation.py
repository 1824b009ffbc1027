"""Scoring a split with a model: predictions in length-sorted batches, the metrics of rated
rows (ROC-AUC and F1 of flagging misaligned responses, per-attribute correlation, AUC per
degradation kind) and of preference pairs (pairwise accuracy with its bootstrap interval),
the decision threshold, and the frozen features the ridge head is fitted on."""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from fedgate.batching import EncodedSplit, is_pairs, make_batch, sorted_batches
from fedgate.config import FedgateConfig
from fedgate.devices import autocast
from fedgate.metrics import (alignment_metrics, best_threshold, misaligned, misalignment_score, pairwise_accuracy,
                             pairwise_accuracy_ci)
from fedgate.model import ALIGNMENT, RewardModel, to_attribute_scale


# ---------------------------------------------------------------------------- evaluation
@torch.no_grad()
def _forward_sorted(model: RewardModel, split: EncodedSplit, cfg: FedgateConfig, pad_id: int,
                    device: torch.device, fn, batch_size: int = 64, progress: bool = False) -> torch.Tensor:
    """Run ``fn(model, batch)`` over the split in length order; rows back in split order."""
    was_training = model.training
    model.eval()
    out = None
    for rows in tqdm(sorted_batches(split, batch_size), desc="scoring", unit="batch", disable=not progress,
                     leave=False):
        with autocast(device, cfg.train.bf16):
            y = fn(model, make_batch(split, rows, pad_id, device)).float().cpu()
        if out is None:
            out = torch.empty(len(split), y.shape[1])
        out[torch.as_tensor(rows)] = y
    model.train(was_training)
    return out


def predict(model: RewardModel, split: EncodedSplit, cfg: FedgateConfig, pad_id: int,
            device: torch.device, progress: bool = False) -> np.ndarray:
    """Attribute predictions on the 0-4 scale and the alignment logit, (n, 6)."""
    out = _forward_sorted(model, split, cfg, pad_id, device, lambda m, b: m(b, split.split_at), progress=progress)
    return to_attribute_scale(out).numpy()


def evaluate(model: RewardModel, split: EncodedSplit, cfg: FedgateConfig, pad_id: int, device: torch.device,
             decision_threshold: float | None = None) -> tuple[dict[str, float], np.ndarray]:
    """All metrics (plus AUC per degradation kind) and the predictions, for ROC curves."""
    pred = predict(model, split, cfg, pad_id, device)
    return metrics_from_predictions(pred, split, cfg, decision_threshold), pred


def metrics_from_predictions(pred: np.ndarray, split: EncodedSplit, cfg: FedgateConfig,
                             decision_threshold: float | None = None) -> dict[str, float]:
    if is_pairs(split):
        return pair_metrics(pred)
    labels = split.labels.numpy()
    metrics = alignment_metrics(pred, labels, threshold=cfg.data.misaligned_threshold,
                                decision_threshold=decision_threshold)
    metrics.update(auc_per_kind(pred, split.kinds))
    metrics.update(rated_pairwise_accuracy(pred, split))
    return metrics


def rated_pairs(split: EncodedSplit) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(better, worse)`` of every two responses to one prompt whose true
    helpfulness differs: the preference pairs hidden in rated rows."""
    if split.groups is None:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    helpfulness = split.labels[:, 0].numpy()
    better, worse = [], []
    order = np.argsort(split.groups, kind="stable")
    bounds = np.flatnonzero(np.diff(split.groups[order])) + 1
    for rows in np.split(order, bounds):
        for a in range(len(rows)):
            for b in range(a + 1, len(rows)):
                i, j = rows[a], rows[b]
                if helpfulness[i] != helpfulness[j]:
                    hi, lo = (i, j) if helpfulness[i] > helpfulness[j] else (j, i)
                    better.append(hi)
                    worse.append(lo)
    return np.asarray(better, np.int64), np.asarray(worse, np.int64)


def rated_pairwise_accuracy(pred: np.ndarray, split: EncodedSplit) -> dict[str, float]:
    """Pairwise accuracy of the alignment score on the rated rows' hidden pairs (see
    :func:`rated_pairs`), with how many pairs; empty when the rows hold none."""
    better, worse = rated_pairs(split)
    if not len(better):
        return {}
    score = -misalignment_score(pred)
    return {"pairwise_accuracy": pairwise_accuracy(score[better], score[worse]), "n_pairs": int(len(better))}


def pair_metrics(pred: np.ndarray) -> dict[str, float]:
    """Pairwise accuracy (with its 95% bootstrap interval) of predictions on a pair split,
    whose rows alternate chosen, rejected; the score is the alignment logit."""
    score = pred[:, ALIGNMENT] if pred.shape[1] > ALIGNMENT else pred[:, 0]
    acc, low, high = pairwise_accuracy_ci(score[0::2], score[1::2])
    return {"pairwise_accuracy": acc, "pairwise_accuracy_low": low, "pairwise_accuracy_high": high,
            "n_pairs": int(len(score) // 2)}


def selection_metric(split: EncodedSplit) -> str:
    """The validation figure that picks the best state: pairwise accuracy or ROC-AUC."""
    return "pairwise_accuracy" if is_pairs(split) else "auc"


def auc_per_kind(pred: np.ndarray, kinds: list[str], reference: str = "real") -> dict[str, float]:
    """Per degradation kind: AUC of ranking that kind's rows below the reference (real)
    rows by the alignment score, by kind and not by (noisy) label. Needs known kinds."""
    from fedgate.metrics import roc_auc

    kinds_arr = np.asarray(kinds)
    ref = kinds_arr == reference
    if not ref.any():
        return {}
    out = {}
    for kind in sorted(set(kinds) - {"", reference}):
        rows = ref | (kinds_arr == kind)
        out[f"auc_kind_{kind}"] = roc_auc(kinds_arr[rows] == kind, misalignment_score(pred[rows]))
    return out


def decision_threshold_from(pred: np.ndarray, split: EncodedSplit, cfg: FedgateConfig) -> float:
    """The F1-best cut on the misalignment score (minus the alignment logit), chosen on
    held-out training data (never on the rows it is reported on)."""
    return best_threshold(misaligned(split.labels[:, 0].numpy(), cfg.data.misaligned_threshold),
                          misalignment_score(pred))


# ---------------------------------------------------------------------------- head init
def frozen_features(model: RewardModel, split: EncodedSplit, cfg: FedgateConfig, pad_id: int,
                    device: torch.device) -> np.ndarray:
    """Head inputs for every row, (n, features)."""
    return _forward_sorted(model, split, cfg, pad_id, device, lambda m, b: m.features(b, split.split_at)).numpy()
