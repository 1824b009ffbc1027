"""Local training (plain torch): the loop every client and the CLI run; scoring a split is
fedgate/evaluation.py.

fit() trains adapters, gates and head with AdamW (separate learning rates for head and
adapters), warmup + cosine schedule, gradient accumulation, clipping and optional bf16
autocast; it validates every ``eval_every`` steps and keeps the best state by validation
ROC-AUC (pairwise accuracy for preference pairs). It returns metrics and per-layer gate
statistics (mean token gate, structural gate).

On rated rows a batch is ``batch_size`` rows and the loss is :func:`fedgate.losses.total_loss`;
on preference pairs (:func:`fedgate.batching.encode_pairs`) a batch is ``batch_size`` pairs,
both replies of each, and the task loss is Bradley-Terry on the alignment logit.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from fedgate.batching import (EncodedSplit, cache_lower_layers, is_pairs, iterate_batches, make_batch, pair_rows,
                              row_lengths)
from fedgate.config import FedgateConfig
from fedgate.devices import autocast, data_parallel_rank, sum_across_ranks
from fedgate.evaluation import evaluate, selection_metric
from fedgate.hidden_store import load_states, save_states
from fedgate.inject import adapter_modules, layer_index
from fedgate.losses import bradley_terry_loss, regularized_loss, shared_gate_kl, total_loss
from fedgate.model import ALIGNMENT, RewardModel, head_targets
from fedgate.state import adapter_state, gathered, load_adapter_state

log = logging.getLogger(__name__)


def lowest_adapter_layer(model: torch.nn.Module) -> int | None:
    """The lowest transformer layer holding an adapter or a baseline method's trainable tensor
    (None if one of them has no layer)."""
    layers = [layer_index(n) for n in [*adapter_modules(model), *getattr(model, "method_params", ())]]
    return None if not layers or None in layers else min(layers)  # type: ignore[type-var]


def prepare_cache(model: RewardModel, splits: list[EncodedSplit], cfg: FedgateConfig, pad_id: int,
                  device: torch.device, progress: bool = True) -> int | None:
    """Cache frozen lower layers for every split when config and model allow; returns split_at.
    With ``train.cache-dir``, states another process already computed are read from there."""
    split_at = lowest_adapter_layer(model)
    if not cfg.train.cache_lower_layers or split_at is None or not model.can_split():
        return None
    for s in splits:
        if s.hidden is not None and s.split_at == split_at:
            continue
        store = cfg.train.cache_dir if s.texts else ""
        if store and load_states(store, model, s, split_at):
            continue
        cache_lower_layers(model, s, split_at, pad_id, device, progress=progress)
        if store:
            save_states(store, model, s)
    return split_at


def batch_loss(pred: torch.Tensor, batch: dict, pairs: bool, model: RewardModel, cfg: FedgateConfig,
               prior: Mapping[str, float] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The training objective of one batch and its parts: on preference pairs (rows
    alternate chosen, rejected) Bradley-Terry on the alignment score, on rated rows the
    attributes' and alignment loss; plus the adapters' regularisers either way."""
    if pairs:
        score = pred[:, ALIGNMENT].float()
        return regularized_loss(bradley_terry_loss(score[0::2], score[1::2]), model, cfg.loss, prior)
    targets = head_targets(batch["labels"], cfg.data.misaligned_threshold)
    return total_loss(pred.float(), targets, model, cfg.loss, prior)


def set_head(model: RewardModel, weights: np.ndarray) -> None:
    """Load ridge weights (d+1, 6), the last row the bias, into the head."""
    with torch.no_grad():
        model.head.weight.copy_(torch.as_tensor(weights[:-1].T, dtype=model.head.weight.dtype))
        model.head.bias.copy_(torch.as_tensor(weights[-1], dtype=model.head.bias.dtype))


def fit_head_ridge(model: RewardModel, x_train: np.ndarray, y_train: np.ndarray,
                   x_val: np.ndarray, y_val: np.ndarray, threshold: int) -> float:
    """Set the head to the ridge solution on frozen features (lambda chosen on validation AUC).

    Starting from the probe's solution, fine-tuning only has to improve on it."""
    from fedgate import ridge

    stats = ridge.ridge_stats(x_train, head_targets(torch.as_tensor(y_train), threshold).numpy())
    w, lam, auc = ridge.fit(stats, x_val, y_val, threshold)
    set_head(model, w)
    log.info("ridge head: lambda=%g, validation AUC %.4f", lam, auc)
    return auc


# ---------------------------------------------------------------------------- training
@dataclass
class TrainResult:
    steps: int
    examples_seen: int
    wall_s: float
    train_loss: float  # mean task+regulariser loss over the last 50 steps
    best_step: int
    best_val_auc: float  # the selection metric's best value: ROC-AUC, or pairwise accuracy for pairs
    history: list[dict] = field(default_factory=list)
    gate_stats: dict[str, dict[str, float]] = field(default_factory=dict)
    rows_trained: int = 0  # rows this process trained on: examples_seen, or this rank's share of them


def make_optimizer(model: RewardModel, cfg: FedgateConfig) -> torch.optim.Optimizer:
    """AdamW with three groups: the LoRA factors (decayed towards 0), every other trainable
    adapter tensor (gates; under the baseline methods IA3 scales, bottleneck weights, BitFit
    biases: not decayed, IA3's scales start at 1), and the head (``train.lr-head``)."""
    lora, other, head = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("head."):
            head.append(p)
        elif name.endswith(("lora_A", "lora_B")):
            lora.append(p)
        else:
            other.append(p)
    t = cfg.train
    groups = [
        {"params": lora, "lr": t.lr_adapter, "weight_decay": t.weight_decay},
        {"params": other, "lr": t.lr_adapter, "weight_decay": 0.0},
        {"params": head, "lr": t.lr_head, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]])


class TorchStepper:
    """How the plain engine turns losses into updates: AdamW (make_optimizer), backward of
    loss / grad_accum per micro-batch, then clip and step once per optimizer step.

    A training engine is anything with this interface (``param_groups``, ``forward``,
    ``backward``, ``step``); fedgate.engine provides a DeepSpeed one."""

    def __init__(self, model: RewardModel, cfg: FedgateConfig) -> None:
        self.opt = make_optimizer(model, cfg)
        self.params = [p for g in self.opt.param_groups for p in g["params"]]
        self.grad_accum = cfg.train.grad_accum
        self.max_grad_norm = cfg.train.max_grad_norm

    @property
    def param_groups(self) -> list[dict]:
        return self.opt.param_groups

    def forward(self, model: RewardModel, batch: dict, split_at: int | None) -> torch.Tensor:
        return model(batch, split_at)

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.grad_accum).backward()

    def step(self) -> None:
        torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def lr_factor(step: int, total: int, warmup: int, schedule: str = "cosine") -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay to 0 at ``total`` or constant.

    A federation's local rounds are short (tens of steps); decaying to 0 inside each one
    halves the average step size, so the federation's default is ``constant``."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class GateTracker:
    """Running mean of each adapter's token gate over the batches of one fit()."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.modules = adapter_modules(model)
        self.sums = {n: 0.0 for n in self.modules}
        self.count = 0

    def update(self) -> None:
        for n, m in self.modules.items():
            if m.last_token_gate_mean is not None:
                self.sums[n] += float(m.last_token_gate_mean.detach())
        self.count += 1

    def local_records(self, counted: bool = True) -> list[float]:
        """This process's token-gate (sum, count) of the last forward, per adapter, flattened;
        zeros when ``counted`` is false (a rank that forwarded a placeholder row)."""
        return [x for m in self.modules.values() for x in (m.token_gate_record if counted else (0.0, 0.0))]

    def add_records(self, records: list[float]) -> None:
        """Like :meth:`update`, from :meth:`local_records` summed over the ranks that shared
        the batch: each adapter's mean gate over the whole batch."""
        for i, n in enumerate(self.modules):
            total, count = records[2 * i], records[2 * i + 1]
            if count > 0:
                self.sums[n] += total / count
        self.count += 1

    def stats(self) -> dict[str, dict[str, float]]:
        out = {}
        logits = [m.struct_logit for m in self.modules.values() if m.struct_logit is not None]
        with gathered(logits):  # whole under ZeRO-3 too
            for n, m in self.modules.items():
                token = self.sums[n] / self.count if self.count and m.gate_weight is not None else 1.0
                out[n] = {"token_gate": token, "structural_gate": float(m.structural_gate().detach())}
        return out


def fit(model: RewardModel, train: EncodedSplit, cfg: FedgateConfig, pad_id: int, device: torch.device, *,
        validation: EncodedSplit | None = None, prior: Mapping[str, float] | None = None,
        progress: bool = True, stepper=None, extra_loss: Callable[[], torch.Tensor] | None = None,
        after_step: Callable[[Any], None] | None = None) -> TrainResult:
    """Train in place; restores the best validation state at the end when validating.

    ``stepper`` is the training engine (default: :class:`TorchStepper` over ``model``).
    Federated rules hook in twice: ``extra_loss()`` is added to every micro-batch's loss
    (FedProx's proximal term) and ``after_step(stepper)`` runs after each optimizer step,
    with the learning rates of that step in ``stepper.param_groups`` (SCAFFOLD's correction).

    In a process group of N ranks (a multi-process client, DeepSpeed averaging the
    gradients) every rank draws the same batches and takes rows ``r::N`` of each; its loss
    is scaled by ``N * n_r / n`` so that the averaged gradient is the whole batch's, and a
    rank without rows forwards one placeholder row at weight 0 (ZeRO's collectives need the
    same forwards and backwards on every rank). One all-reduce per micro-batch adds up the
    loss and the token-gate records before the backward pass, so train-loss and gate
    statistics are the whole batch's, and so is the gate-KL term (``loss.beta``): a function
    of the whole batch's mean gate, which each rank back-propagates through its own share
    (:func:`fedgate.losses.shared_gate_kl`)."""
    t = cfg.train
    _, world = data_parallel_rank()
    # with several ranks the gate-KL term is added from the ranks' summed gate records below
    rank_cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, beta=0.0)) if world > 1 else cfg
    rng = np.random.default_rng(t.seed)
    torch.manual_seed(t.seed)
    model.to(device).train()
    opt = stepper or TorchStepper(model, cfg)
    pairs = is_pairs(train)
    lengths = row_lengths(train)
    if pairs:  # batches of pairs: both replies of each pair in one batch
        lengths = lengths[0::2] + lengths[1::2]
    items = len(lengths)
    batches_per_epoch = math.ceil(items / t.batch_size)
    total = t.max_steps or max(1, math.ceil(t.epochs * batches_per_epoch / t.grad_accum))
    warmup = max(1, int(t.warmup_ratio * total))
    base_lrs = [g["lr"] for g in opt.param_groups]
    tracker = GateTracker(model)
    result = TrainResult(0, 0, 0.0, float("nan"), 0, float("nan"))
    best_state, recent = None, []
    start = time.perf_counter()
    batches: list[np.ndarray] = []
    key = selection_metric(validation) if validation is not None else "auc"
    bar = tqdm(total=total, desc="training", disable=not progress, unit="step")
    for step in range(total):
        for g, lr in zip(opt.param_groups, base_lrs):
            g["lr"] = lr * lr_factor(step, total, warmup, t.schedule)
        for _ in range(t.grad_accum):
            if not batches:
                batches = iterate_batches(items, t.batch_size, rng, lengths)
            picked = batches.pop(0)
            loss_value, parts, rows_used = _micro_batch(model, opt, train, picked, cfg, rank_cfg, pad_id, device,
                                                        tracker, prior, extra_loss)
            result.examples_seen += 2 * len(picked) if pairs else len(picked)
            result.rows_trained += rows_used
            recent = (recent + [loss_value])[-50:]
        opt.step()
        if after_step is not None:
            after_step(opt)
        result.steps = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(recent):.4f}")
        last = step + 1 == total
        if validation is not None and ((t.eval_every and (step + 1) % t.eval_every == 0) or last):
            better = _validate(model, validation, cfg, pad_id, device, result, key, float(np.mean(recent)), parts,
                               time.perf_counter() - start)
            best_state = better if better is not None else best_state
    bar.close()
    result.wall_s = time.perf_counter() - start
    result.train_loss = float(np.mean(recent)) if recent else float("nan")
    if best_state is not None and result.best_step != result.steps:
        load_adapter_state(model, best_state)
        log.info("restored the best validation state from step %d", result.best_step)
    result.gate_stats = tracker.stats()  # structural gates of the state that is kept
    return result


def _micro_batch(model: RewardModel, opt, train: EncodedSplit, picked: np.ndarray, cfg: FedgateConfig,
                 rank_cfg: FedgateConfig, pad_id: int, device: torch.device, tracker: "GateTracker",
                 prior: Mapping[str, float] | None, extra_loss: Callable[[], torch.Tensor] | None
                 ) -> tuple[float, dict[str, float], int]:
    """Forward and backward of one micro-batch (``picked``: its rows, or pairs), this rank's
    share of it in a process group: (the whole batch's loss, the loss parts, rows this rank
    trained on). ``rank_cfg`` is ``cfg`` without the gate-KL term when the ranks add it from
    their summed gate records."""
    rank, world = data_parallel_rank()
    pairs = is_pairs(train)
    share, weight = picked, 1.0
    if world > 1:
        share = picked[rank::world]
        weight = world * len(share) / len(picked)
        if not len(share):
            share = picked[:1]  # a placeholder row, at weight 0
    rows = pair_rows(share) if pairs else share
    batch = make_batch(train, rows, pad_id, device)
    with autocast(device, cfg.train.bf16):
        pred = opt.forward(model, batch, train.split_at)
    loss, parts = batch_loss(pred, batch, pairs, model, rank_cfg, prior)
    if extra_loss is not None:
        loss = loss + extra_loss()
    if world > 1:
        summed = sum_across_ranks([float(loss.detach()) * weight / world,
                                   *tracker.local_records(counted=weight > 0)], device)
        tracker.add_records(summed[1:])
        kl_value, kl_term = 0.0, 0.0
        if cfg.loss.beta:
            kl_value, kl_term = shared_gate_kl(model, summed[1:], prior if prior is not None else
                                               cfg.loss.gate_prior, cfg.loss.gate_prior, world, weight > 0)
        opt.backward(loss * weight + cfg.loss.beta * kl_term)
        loss_value = summed[0] + cfg.loss.beta * kl_value
    else:
        opt.backward(loss)
        tracker.update()
        loss_value = float(loss.detach())
    return loss_value, parts, len(rows) if weight > 0 else 0


def _validate(model: RewardModel, validation: EncodedSplit, cfg: FedgateConfig, pad_id: int, device: torch.device,
              result: TrainResult, key: str, train_loss: float, parts: dict[str, float],
              elapsed_s: float) -> dict[str, torch.Tensor] | None:
    """Score the validation split after ``result.steps`` steps into ``result.history``; the
    adapter state when it is the best so far (None otherwise)."""
    step = result.steps
    metrics, _ = evaluate(model, validation, cfg, pad_id, device)
    value = metrics[key]
    entry = {"step": step, "train_loss": train_loss, f"val_{key}": value, "elapsed_s": elapsed_s,
             **{f"loss_{k}": v for k, v in parts.items()}}
    result.history.append(entry)
    log.info("step %d: loss %.4f, validation %s %.4f", step, entry["train_loss"], key, value)
    if np.isnan(value):
        log.warning("validation %s is undefined: no best-state selection", key)
    elif result.best_step == 0 or value > result.best_val_auc:
        result.best_val_auc, result.best_step = value, step
        return adapter_state(model)
    return None
