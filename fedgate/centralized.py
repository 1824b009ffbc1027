"""Centralized training and evaluation runs: what ``fedgate train`` / ``fedgate evaluate`` do.

A training run writes to its output directory:

- ``adapters.safetensors``: adapter, gate and head weights; its header holds the resolved
  config and the decision threshold, so ``fedgate evaluate`` can rebuild the model;
- ``metrics.json``: test and validation metrics, baselines on the same split, parameter
  counts, adapter bytes, training history and gate statistics;
- ``config.json``: the resolved config plus package versions;
- ``test_predictions.csv``: per test row, its kind, true attributes and predictions (for
  preference pairs: per test pair, the chosen and the rejected reply's score).

A data file of preference pairs (:mod:`fedgate.data.pairs`) trains by Bradley-Terry and is
scored by pairwise accuracy instead of ROC-AUC, with its own cheap baselines
(:mod:`fedgate.pairwise`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from fedgate.batching import encode_pairs, encode_split, is_pairs
from fedgate.config import FedgateConfig
from fedgate.data import noisy_dataset
from fedgate.data.pairs import is_pair_dataset, noisy_columns
from fedgate.engine import close_stepper, make_stepper
from fedgate.inject import count_parameters
from fedgate.metrics import misaligned, misalignment_score, roc_auc
from fedgate.model import build_reward_model
from fedgate.state import adapter_state, save_state, state_nbytes
from fedgate.data.splits import load_eval_split, load_splits
from fedgate.run_outputs import package_versions, write_predictions
from fedgate.trained import ADAPTER_FILE, load_trained
from fedgate.devices import pick_device
from fedgate.evaluation import (decision_threshold_from, evaluate, frozen_features, metrics_from_predictions,
                                pair_metrics, predict)
from fedgate.train import fit, fit_head_ridge, prepare_cache, set_head

log = logging.getLogger(__name__)


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")


def train_centralized(cfg: FedgateConfig, out_dir: str | Path, *, baselines: bool = True,
                      progress: bool = True) -> dict:
    """Train on the pooled training split, evaluate on test, write outputs; returns metrics."""
    out = Path(out_dir)  # created only once there is something to write: a bad input leaves no folder
    t0 = time.perf_counter()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = pick_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    splits = load_splits(cfg)
    log.info("data: %s", {k: len(v) for k, v in splits.items()})
    model, tokenizer = build_reward_model(cfg.model, cfg.adapter)
    model.to(device)
    pad_id = tokenizer.pad_token_id
    pairs = is_pair_dataset(splits["train"])
    encode = encode_pairs if pairs else encode_split
    enc = {k: encode(v, tokenizer, cfg.model) for k, v in splits.items()}
    t_cache = time.perf_counter()
    prepare_cache(model, list(enc.values()), cfg, pad_id, device, progress)
    cache_s = time.perf_counter() - t_cache

    frozen = None
    if cfg.train.head_init == "ridge" or baselines:
        frozen = {k: frozen_features(model, s, cfg, pad_id, device) for k, s in enc.items()}
    step0 = _start_head(model, enc, frozen, cfg, device) if frozen is not None else {}

    stepper = make_stepper(model, cfg)
    try:
        result = fit(model, enc["train"], cfg, pad_id, device, validation=enc["validation"], progress=progress,
                     stepper=stepper)
    finally:
        close_stepper(stepper)
    val_pred = predict(model, enc["validation"], cfg, pad_id, device)
    cut = None if pairs else decision_threshold_from(val_pred, enc["validation"], cfg)
    # Validation chose the checkpoint and the cut: its F1 is reported as f1_oracle (optimistic).
    val_metrics = metrics_from_predictions(val_pred, enc["validation"], cfg)
    test_metrics, pred = evaluate(model, enc["test"], cfg, pad_id, device, decision_threshold=cut)

    state = adapter_state(model)
    params = count_parameters(model)
    metrics = {
        "test": test_metrics,
        "validation": val_metrics,
        "test_at_step0": step0 or {"auc": float("nan")},
        "decision_threshold": cut,
        "params": {"trainable": params.trainable, "backbone": params.backbone, "percent": params.percent},
        "adapter_bytes": state_nbytes(state),
        "train": {"steps": result.steps, "examples_seen": result.examples_seen, "wall_s": result.wall_s,
                  "cache_s": cache_s, "best_step": result.best_step,
                  ("best_val_pairwise_accuracy" if pairs else "best_val_auc"): result.best_val_auc,
                  "final_loss": result.train_loss},
        "history": result.history,
        "gate_stats": result.gate_stats,
        "data": {k: len(v) for k, v in splits.items()},
    }
    if baselines:
        metrics["baselines"] = _baselines(splits, frozen, cfg, pairs)
    metrics["total_wall_s"] = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    save_state(out / ADAPTER_FILE, state, {"config": cfg.to_flat(), "decision_threshold": cut})
    _write_json(out / "metrics.json", metrics)
    _write_json(out / "config.json", {"config": cfg.to_flat(), "versions": package_versions()})
    write_predictions(out / "test_predictions.csv", enc["test"], pred)
    return metrics


def _start_head(model, enc: dict, frozen: dict, cfg: FedgateConfig, device: torch.device) -> dict[str, float]:
    """Fit the head on the frozen features (``train.head-init=ridge``: ridge on rated rows,
    the linear Bradley-Terry head on pairs) and score it on test: the model before any
    adapter step."""
    pairs = is_pairs(enc["train"])
    if cfg.train.head_init == "ridge" and pairs:
        from fedgate.pairwise import differences, fit_bradley_terry, head_weights_from

        w, c, acc = fit_bradley_terry(differences(frozen["train"]), differences(frozen["validation"]))
        set_head(model, head_weights_from(w))
        log.info("Bradley-Terry head on frozen features: C %g, validation pairwise accuracy %.4f", c, acc)
    elif cfg.train.head_init == "ridge":
        fit_head_ridge(model, frozen["train"], enc["train"].labels.numpy(), frozen["validation"],
                       enc["validation"].labels.numpy(), cfg.data.misaligned_threshold)
    with torch.no_grad():
        head_pred = model.head(torch.as_tensor(frozen["test"], device=device)).cpu().numpy()
    if pairs:
        return {"pairwise_accuracy": pair_metrics(head_pred)["pairwise_accuracy"]}
    return {"auc": roc_auc(misaligned(enc["test"].labels[:, 0].numpy(), cfg.data.misaligned_threshold),
                           misalignment_score(head_pred))}


def _baselines(splits: dict, frozen: dict, cfg: FedgateConfig, pairs: bool) -> dict:
    """The cheap baselines on the same splits: length, TF-IDF, the frozen-feature probe and
    boosted trees (on pairs: their pairwise versions)."""
    if pairs:
        from fedgate.pairwise import pair_baselines

        return pair_baselines(splits["train"], splits["validation"], splits["test"], frozen)
    from fedgate.cheap_baselines import all_baselines

    return all_baselines(splits["train"], splits["validation"], splits["test"], frozen,
                         cfg.data.misaligned_threshold, cfg.train.seed)


def evaluate_saved(adapters: str | Path, *, source: str | None = None, split: str = "test",
                   noise_rate: float = 0.0, seed: int = 0, progress: bool = True) -> dict:
    """Rebuild the model from a saved adapter file (or run directory) and evaluate it."""
    trained = load_trained(adapters, source=source)
    model, tokenizer, cfg, meta, path = trained.model, trained.tokenizer, trained.cfg, trained.meta, trained.path
    device = pick_device(cfg.train.device)
    model.to(device)
    ds = load_eval_split(cfg, split)
    pairs = is_pair_dataset(ds)
    if noise_rate > 0:  # on pairs: the prompt and both replies, as the server's noisy evaluation does
        ds = noisy_dataset(ds, noise_rate, seed=seed, columns=noisy_columns(ds))
    enc = (encode_pairs if pairs else encode_split)(ds, tokenizer, cfg.model)
    prepare_cache(model, [enc], cfg, tokenizer.pad_token_id, device, progress)
    metrics, _ = evaluate(model, enc, cfg, tokenizer.pad_token_id, device,
                          decision_threshold=meta.get("decision_threshold"))
    metrics.update({"source": cfg.data.source, "split": split, "noise_rate": noise_rate, "adapters": str(path)})
    if not pairs:
        metrics["misaligned_rows"] = int(misaligned(enc.labels[:, 0].numpy(), cfg.data.misaligned_threshold).sum())
    return metrics
