"""Server-side evaluation of the global model's alignment robustness.

On rows no client sees: ROC-AUC and F1 of detecting misaligned responses (F1 at a cut chosen
on the validation split), Pearson r per attribute, and ROC-AUC again with semantic noise at
each configured rate. The noisy copies are fixed per rate and seed, so rounds are comparable.
On preference pairs: pairwise accuracy with its bootstrap interval, clean and under noise.
"""

from __future__ import annotations

import logging
import time
from typing import Collection, Mapping

import numpy as np
import torch

from fedgate.batching import EncodedSplit, encode_pairs, encode_split
from fedgate.config import FedgateConfig
from fedgate.data import noisy_dataset
from fedgate.data.pairs import is_pair_dataset, noisy_columns
from fedgate.federated.client_rules import configure_adapters
from fedgate.federated.shards import server_splits
from fedgate.inject import count_parameters
from fedgate.model import build_reward_model
from fedgate.data.splits import load_splits
from fedgate.state import adapter_state, from_numpy, load_adapter_state, to_numpy
from fedgate.devices import pick_device
from fedgate.evaluation import (decision_threshold_from, evaluate, frozen_features, metrics_from_predictions,
                                predict, selection_metric)
from fedgate.train import prepare_cache

log = logging.getLogger(__name__)


def noise_key(rate: float) -> str:
    return f"auc_noise_{rate:g}"


class ServerEvaluator:
    """Holds the server's copy of the model and the encoded evaluation rows."""

    def __init__(self, cfg: FedgateConfig, *, progress: bool = True) -> None:
        self.cfg = cfg
        self.device = pick_device(cfg.train.device)
        torch.manual_seed(cfg.train.seed)  # the initial global adapters are reproducible
        self.model, self.tokenizer = build_reward_model(cfg.model, cfg.adapter)
        configure_adapters(self.model, cfg)  # e.g. A drawn from the shared seed under ffa
        self.model.to(self.device)
        self.pad_id = self.tokenizer.pad_token_id
        t0 = time.perf_counter()
        rows = server_splits(cfg)
        self.pairs = is_pair_dataset(rows["test"])
        encode = encode_pairs if self.pairs else encode_split
        self.splits: dict[str, EncodedSplit] = {k: encode(v, self.tokenizer, cfg.model) for k, v in rows.items()}
        for rate in cfg.server.noise_rates:
            noisy = noisy_dataset(rows["test"], rate, seed=cfg.data.seed, columns=noisy_columns(rows["test"]))
            self.splits[noise_key(rate)] = encode(noisy, self.tokenizer, cfg.model)
        prepare_cache(self.model, list(self.splits.values()), cfg, self.pad_id, self.device, progress)
        self.setup_s = time.perf_counter() - t0
        log.info("server evaluation rows: %s (%.1f s to encode and cache)",
                 {k: len(v) for k, v in self.splits.items()}, self.setup_s)
        counts = count_parameters(self.model)
        self.trainable_params, self.backbone_params = counts.trainable, counts.backbone
        self.backbone_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters() if not p.requires_grad)

    def initial_state(self) -> dict[str, np.ndarray]:
        """The global trainable state before round 1 (adapters as initialised, B = 0)."""
        return to_numpy(adapter_state(self.model))

    def evaluate(self, state: Mapping[str, np.ndarray], pruned: Collection[str] = (), *,
                 noise: bool = True) -> tuple[dict[str, float], np.ndarray]:
        """Metrics of ``state`` (with the ``pruned`` adapters off) on the test rows, its
        validation score (``validation_auc``, or ``validation_pairwise_accuracy`` on pairs: what
        picks the best round) and its test predictions (n, 5) for ROC curves; with ``noise``,
        also the AUCs under ``server.noise-rates``."""
        t0 = time.perf_counter()
        configure_adapters(self.model, self.cfg, pruned)
        load_adapter_state(self.model, from_numpy(state))
        val = self.splits["validation"]
        val_pred = predict(self.model, val, self.cfg, self.pad_id, self.device)
        cut = None if self.pairs else decision_threshold_from(val_pred, val, self.cfg)
        metrics, pred = evaluate(self.model, self.splits["test"], self.cfg, self.pad_id, self.device,
                                 decision_threshold=cut)
        metrics = {k: float(v) for k, v in metrics.items()}
        if cut is not None:
            metrics["decision_threshold"] = float(cut)
        key = selection_metric(val)  # what picks the best round (server.py: best_by_validation)
        metrics[f"validation_{key}"] = float(metrics_from_predictions(val_pred, val, self.cfg)[key])
        for rate in self.cfg.server.noise_rates if noise else ():
            noisy, _ = evaluate(self.model, self.splits[noise_key(rate)], self.cfg, self.pad_id, self.device)
            if "auc" in noisy:
                metrics[noise_key(rate)] = float(noisy["auc"])
            if "pairwise_accuracy" in noisy:
                metrics[f"pairwise_accuracy_noise_{rate:g}"] = float(noisy["pairwise_accuracy"])
        metrics["eval_s"] = time.perf_counter() - t0
        return metrics, pred

    def validation_auc(self, state: Mapping[str, np.ndarray], pruned: Collection[str] = ()) -> float:
        """ROC-AUC (pairwise accuracy on pairs) of ``state`` on the validation rows only (never
        the test rows): how the ``validated`` strategy scores a candidate update."""
        configure_adapters(self.model, self.cfg, pruned)
        load_adapter_state(self.model, from_numpy(state))
        val = self.splits["validation"]
        return float(metrics_from_predictions(predict(self.model, val, self.cfg, self.pad_id, self.device), val,
                                              self.cfg)[selection_metric(val)])

    def validation_features(self, state: Mapping[str, np.ndarray],
                            pruned: Collection[str] = ()) -> tuple[np.ndarray, np.ndarray]:
        """Head inputs of the validation rows under ``state`` (with the ``pruned`` adapters
        off) and their 0-4 labels: what the federated ridge head chooses its regularisation on."""
        configure_adapters(self.model, self.cfg, pruned)
        load_adapter_state(self.model, from_numpy(state))
        val = self.splits["validation"]
        return frozen_features(self.model, val, self.cfg, self.pad_id, self.device), val.labels.numpy()

    def baselines(self, state: Mapping[str, np.ndarray]) -> dict[str, float]:
        """The cheap baselines (fedgate/cheap_baselines.py) fitted on the run's pooled training rows
        (every client's shard) and scored on the server's test rows, the rows the federation
        is scored on; feature baselines use the head inputs under ``state``."""
        from fedgate.cheap_baselines import all_baselines
        from fedgate.pairwise import pair_baselines

        t0 = time.perf_counter()
        rows = {**server_splits(self.cfg), "train": load_splits(self.cfg)["train"]}
        train = (encode_pairs if self.pairs else encode_split)(rows["train"], self.tokenizer, self.cfg.model)
        prepare_cache(self.model, [train], self.cfg, self.pad_id, self.device, progress=False)
        configure_adapters(self.model, self.cfg)
        load_adapter_state(self.model, from_numpy(state))
        frozen = {"train": frozen_features(self.model, train, self.cfg, self.pad_id, self.device)}
        for name in ("validation", "test"):
            frozen[name] = frozen_features(self.model, self.splits[name], self.cfg, self.pad_id, self.device)
        try:
            if self.pairs:
                out = pair_baselines(rows["train"], rows["validation"], rows["test"], frozen)
            else:
                out = all_baselines(rows["train"], rows["validation"], rows["test"], frozen,
                                    self.cfg.data.misaligned_threshold, self.cfg.train.seed)
        except ValueError as e:  # e.g. a single class or no shared word in a handful of rows
            log.warning("cheap baselines skipped on %d pooled training rows: %s", len(train), e)
            return {}
        log.info("baselines on %d pooled training rows (%.1f s): %s", len(train), time.perf_counter() - t0,
                 {k: round(v, 4) for k, v in out.items()})
        return out

    def test_labels(self) -> np.ndarray:
        return self.splits["test"].labels.numpy()
