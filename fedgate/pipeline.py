"""Centralized training and evaluation runs: what ``fedgate train`` / ``fedgate evaluate`` do.

A training run writes to its output directory:

- ``adapters.safetensors``: adapter, gate and head weights; its header holds the resolved
  config and the decision threshold, so ``fedgate evaluate`` can rebuild the model;
- ``metrics.json``: test and validation metrics, baselines on the same split, parameter
  counts, adapter bytes, training history and gate statistics;
- ``config.json``: the resolved config plus package versions;
- ``test_predictions.csv``: per test row, its kind, true attributes and predictions.
"""

from __future__ import annotations

import csv
import json
import logging
import platform
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from fedgate.batching import EncodedSplit, encode_split
from fedgate.config import FedgateConfig
from fedgate.data import (ATTRIBUTES, DataError, build_embedded_dataset, load_helpsteer, noisy_dataset,
                          split_by_prompt)
from fedgate.engine import close_stepper, make_stepper
from fedgate.inject import adapter_modules, count_parameters
from fedgate.metrics import misaligned, misalignment_score, roc_auc
from fedgate.model import build_reward_model
from fedgate.state import adapter_state, load_adapter_state, load_state, save_state, state_nbytes
from fedgate.train import (decision_threshold_from, evaluate, fit, fit_head_ridge, frozen_features,
                           metrics_from_predictions, pick_device, predict, prepare_cache)

log = logging.getLogger(__name__)
ADAPTER_FILE = "adapters.safetensors"


def _embedded(d):
    """The embedded dataset as configured by a DataConfig (cached per arguments)."""
    return build_embedded_dataset(d.seed, label_noise=d.label_noise, max_response_chars=d.max_response_chars)


def load_splits(cfg: FedgateConfig) -> dict:
    """train / validation / test datasets for the configured source.

    Validation rows choose the ridge lambda, the best checkpoint and the F1 cut, so they are
    never the rows test metrics are reported on:
    - one data file is split 80/10/10 by prompt (seeded);
    - a folder (or hub dataset) without a test split: its validation split becomes the test
      split and a new validation split is carved from train by prompt (10%).
    """
    d = cfg.data
    if d.source == "embedded":
        dd = _embedded(d)
        splits = {"train": dd["train"], "validation": dd["validation"], "test": dd["test"]}
    elif Path(d.source).is_file():
        splits = split_by_prompt(load_helpsteer(d.source, seed=d.seed),
                                 {"train": 0.8, "validation": 0.1, "test": 0.1}, d.seed)
        log.info("one data file: split 80/10/10 by prompt (seed %d)", d.seed)
    else:
        train = load_helpsteer(d.source, d.train_split, seed=d.seed)
        validation = load_helpsteer(d.source, d.validation_split, seed=d.seed)
        try:
            splits = {"train": train, "validation": validation,
                      "test": load_helpsteer(d.source, d.test_split, seed=d.seed)}
        except DataError as e:
            log.warning("no %r split (%s): testing on %r and carving validation from train (10%% of prompts)",
                        d.test_split, e, d.validation_split)
            carved = split_by_prompt(train, {"train": 0.9, "validation": 0.1}, d.seed)
            splits = {"train": carved["train"], "validation": carved["validation"], "test": validation}
    if d.limit and d.limit < len(splits["train"]):
        splits["train"] = splits["train"].shuffle(seed=d.seed).select(range(d.limit))
    return splits


def load_eval_split(cfg: FedgateConfig, split: str):
    """The rows ``fedgate evaluate`` scores: a named split, or every row of a single file."""
    d = cfg.data
    if d.source == "embedded":
        dd = _embedded(d)
        if split not in dd:
            raise DataError(f"the embedded dataset has splits {list(dd)}, not {split!r}")
        return dd[split]
    if Path(d.source).is_file():
        log.info("%s is one file: evaluating all its rows", d.source)
    return load_helpsteer(d.source, split, seed=d.seed)


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("fedgate", "torch", "transformers", "datasets", "flwr", "deepspeed", "peft", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")


def write_predictions(path: Path, split: EncodedSplit, pred: np.ndarray) -> None:
    labels = split.labels.numpy().astype(int)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        extra = ["alignment_logit"] if pred.shape[1] > len(ATTRIBUTES) else []
        w.writerow(["kind", *[f"true_{a}" for a in ATTRIBUTES], *[f"pred_{a}" for a in ATTRIBUTES], *extra])
        for kind, y, p in zip(split.kinds, labels, pred):
            w.writerow([kind, *y.tolist(), *(f"{v:.4f}" for v in p)])


def train_centralized(cfg: FedgateConfig, out_dir: str | Path, *, baselines: bool = True,
                      progress: bool = True) -> dict:
    """Train on the pooled training split, evaluate on test, write outputs; returns metrics."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
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
    enc = {k: encode_split(v, tokenizer, cfg.model) for k, v in splits.items()}
    t_cache = time.perf_counter()
    prepare_cache(model, list(enc.values()), cfg, pad_id, device, progress)
    cache_s = time.perf_counter() - t_cache

    frozen = None
    if cfg.train.head_init == "ridge" or baselines:
        frozen = {k: frozen_features(model, s, cfg, pad_id, device) for k, s in enc.items()}
    if cfg.train.head_init == "ridge":
        fit_head_ridge(model, frozen["train"], enc["train"].labels.numpy(), frozen["validation"],
                       enc["validation"].labels.numpy(), cfg.data.misaligned_threshold)
    step0_auc = float("nan")
    if frozen is not None:  # the head on frozen features = the model before any adapter step
        with torch.no_grad():
            head_pred = model.head(torch.as_tensor(frozen["test"], device=device)).cpu()
        step0_auc = roc_auc(misaligned(enc["test"].labels[:, 0].numpy(), cfg.data.misaligned_threshold),
                            misalignment_score(head_pred.numpy()))

    stepper = make_stepper(model, cfg)
    try:
        result = fit(model, enc["train"], cfg, pad_id, device, validation=enc["validation"], progress=progress,
                     stepper=stepper)
    finally:
        close_stepper(stepper)
    val_pred = predict(model, enc["validation"], cfg, pad_id, device)
    cut = decision_threshold_from(val_pred, enc["validation"], cfg)
    # Validation chose the checkpoint and the cut: its F1 is reported as f1_oracle (optimistic).
    val_metrics = metrics_from_predictions(val_pred, enc["validation"], cfg)
    test_metrics, pred = evaluate(model, enc["test"], cfg, pad_id, device, decision_threshold=cut)

    state = adapter_state(model)
    params = count_parameters(model)
    metrics = {
        "test": test_metrics,
        "validation": val_metrics,
        "test_at_step0": {"auc": step0_auc},
        "decision_threshold": cut,
        "params": {"trainable": params.trainable, "backbone": params.backbone, "percent": params.percent},
        "adapter_bytes": state_nbytes(state),
        "train": {"steps": result.steps, "examples_seen": result.examples_seen, "wall_s": result.wall_s,
                  "cache_s": cache_s, "best_step": result.best_step, "best_val_auc": result.best_val_auc,
                  "final_loss": result.train_loss},
        "history": result.history,
        "gate_stats": result.gate_stats,
        "data": {k: len(v) for k, v in splits.items()},
    }
    if baselines:
        from fedgate.baselines import all_baselines

        metrics["baselines"] = all_baselines(splits["train"], splits["validation"], splits["test"], frozen,
                                             cfg.data.misaligned_threshold, cfg.train.seed)
    metrics["total_wall_s"] = time.perf_counter() - t0
    save_state(out / ADAPTER_FILE, state, {"config": cfg.to_flat(), "decision_threshold": cut})
    _write_json(out / "metrics.json", metrics)
    _write_json(out / "config.json", {"config": cfg.to_flat(), "versions": package_versions()})
    write_predictions(out / "test_predictions.csv", enc["test"], pred)
    return metrics


def evaluate_saved(adapters: str | Path, *, source: str | None = None, split: str = "test",
                   noise_rate: float = 0.0, seed: int = 0, progress: bool = True) -> dict:
    """Rebuild the model from a saved adapter file (or run directory) and evaluate it."""
    path = Path(adapters)
    if path.is_dir() and not (path / ADAPTER_FILE).is_file() and (path / "checkpoints").is_dir():
        from fedgate.federated.rundir import (
            RunDir,  # a federated run: its latest global adapters
        )

        found = RunDir(path).checkpoints()
        path = found[max(found)] if found else path / ADAPTER_FILE
    elif path.is_dir():
        path = path / ADAPTER_FILE
    state, meta = load_state(path)
    if "config" not in meta:
        raise ValueError(f"{path} has no fedgate config in its header; was it written by fedgate?")
    cfg = FedgateConfig.from_flat(meta["config"])
    if source is not None:
        cfg = FedgateConfig.from_flat({**cfg.to_flat(), "data.source": source})
    device = pick_device(cfg.train.device)
    model, tokenizer = build_reward_model(cfg.model, cfg.adapter)
    load_adapter_state(model, state)
    pruned = set(meta.get("strategy", {}).get("pruned", []))  # a federated run's pruned insertion points
    for name, module in adapter_modules(model).items():
        module.enabled = name not in pruned
    model.to(device)
    ds = load_eval_split(cfg, split)
    if noise_rate > 0:
        ds = noisy_dataset(ds, noise_rate, seed=seed)
    enc = encode_split(ds, tokenizer, cfg.model)
    prepare_cache(model, [enc], cfg, tokenizer.pad_token_id, device, progress)
    metrics, _ = evaluate(model, enc, cfg, tokenizer.pad_token_id, device,
                          decision_threshold=meta.get("decision_threshold"))
    y = misaligned(enc.labels[:, 0].numpy(), cfg.data.misaligned_threshold)
    metrics.update({"source": cfg.data.source, "split": split, "noise_rate": noise_rate, "adapters": str(path),
                    "misaligned_rows": int(y.sum())})
    return metrics
