"""What an aggregation strategy asks of a client beyond plain local training.

- Which tensors travel (:func:`shared_keys`): everything trainable, minus ``lora_A`` under
  ``ffa`` (A is frozen from a shared seed), minus ``struct_logit`` with personal gates (routing
  stays local), minus every tensor of a pruned insertion point.
- :func:`configure_adapters` puts a (possibly cached, shared) model into the state a round
  asks for: pruned adapters switched off and frozen, A frozen and re-drawn under ``ffa``.
- FedProx (Li et al., 2020): :func:`proximal_term`, ``mu/2 ||theta - theta_global||^2``.
- SCAFFOLD (Karimireddy et al., 2020): the gradient correction ``c - c_i`` added before
  every optimizer step (:func:`control_correction`), and the new client control variate
  ``c_i+ = grad f_i(x)`` at the global model (the paper's option I, :func:`mean_gradient`),
  which stays right whatever local optimizer and schedule the client uses.
"""

from __future__ import annotations

import math
import zlib
from typing import Callable, Collection, Iterable, Mapping

import numpy as np
import torch

from fedgate.aggregation.lora import module_of
from fedgate.batching import EncodedSplit, is_pairs, make_batch, sorted_batches
from fedgate.config import FedgateConfig
from fedgate.inject import adapter_modules
from fedgate.model import RewardModel
from fedgate.train import batch_loss, pair_rows

FFA = "ffa"


def shared_keys(keys: Iterable[str], cfg: FedgateConfig, pruned: Collection[str] = ()) -> list[str]:
    """The state keys that go back and forth each round, in the given order."""
    fed = cfg.federation
    out = []
    for k in keys:
        if module_of(k) in pruned:
            continue
        if fed.strategy == FFA and k.endswith(".lora_A"):
            continue
        if fed.personal_gates and k.endswith(".struct_logit"):
            continue
        out.append(k)
    return out


def seeded_lora_a(name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """A's value under ``ffa``: drawn like nn.Linear's init (kaiming uniform, a = sqrt(5)) from
    a generator seeded by (seed, module name), so server and every client agree exactly."""
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + zlib.crc32(name.encode()))
    bound = 1.0 / math.sqrt(shape[1])  # kaiming_uniform_(a=sqrt(5)) on a (r, d_in) weight
    return (torch.rand(shape, generator=gen) * 2.0 - 1.0) * bound


@torch.no_grad()
def configure_adapters(model: RewardModel, cfg: FedgateConfig, pruned: Collection[str] = ()) -> None:
    """Switch pruned adapters off (and freeze them); under ``ffa`` freeze A at its seeded
    value. Resets every other adapter to trainable, so a cached model serves any round."""
    ffa = cfg.federation.strategy == FFA
    for name, m in adapter_modules(model).items():
        off = name in pruned
        m.enabled = not off
        for pname in m.adapter_names:
            getattr(m, pname).requires_grad_(not off and not (ffa and pname == "lora_A"))
        if ffa:
            m.lora_A.copy_(seeded_lora_a(name, tuple(m.lora_A.shape), cfg.train.seed).to(m.lora_A))


def trainable_params(model: RewardModel) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def proximal_term(model: RewardModel, start: Mapping[str, torch.Tensor], mu: float) -> Callable[[], torch.Tensor]:
    """``mu/2 sum ||p - p_global||^2`` over the trainable tensors that came from the server."""
    pairs = [(p, start[n].to(p.device, p.dtype)) for n, p in trainable_params(model).items() if n in start]
    if not pairs:
        raise ValueError("FedProx: none of the trainable tensors came from the server")

    def term() -> torch.Tensor:
        return 0.5 * mu * sum(((p - g) ** 2).sum() for p, g in pairs)
    return term


def control_correction(model: RewardModel, c_global: Mapping[str, torch.Tensor],
                       c_local: Mapping[str, torch.Tensor]) -> Callable[[], None]:
    """SCAFFOLD: add ``c - c_i`` to each trainable tensor's gradient before each step."""
    corrections = []
    for n, p in trainable_params(model).items():
        if n in c_global:
            corrections.append((p, (c_global[n] - c_local.get(n, torch.zeros_like(c_global[n]))).to(p.device)))

    def correct() -> None:
        for p, c in corrections:
            if p.grad is None:
                p.grad = c.clone().to(p.dtype)
            else:
                p.grad.add_(c.to(p.grad.dtype))
    return correct


def mean_gradient(model: RewardModel, split: EncodedSplit, cfg: FedgateConfig, pad_id: int, device: torch.device,
                  keys: Collection[str], prior: Mapping[str, float] | None = None) -> dict[str, torch.Tensor]:
    """The gradient of the client's loss at the model's current weights, averaged over all
    its training rows (one pass in length order, dropout off, no update)."""
    params = {n: p for n, p in trainable_params(model).items() if n in keys}
    sums = {n: torch.zeros_like(p, device="cpu") for n, p in params.items()}
    was_training = model.training
    model.eval()
    total = 0
    pairs = is_pairs(split)
    if pairs:  # both replies of a pair in one batch, batch-size pairs at a time
        n, size = len(split) // 2, cfg.train.batch_size
        batches = [pair_rows(np.arange(i, min(i + size, n))) for i in range(0, n, size)]
    else:
        batches = sorted_batches(split, cfg.train.batch_size)
    for rows in batches:
        batch = make_batch(split, rows, pad_id, device)
        model.zero_grad(set_to_none=True)
        pred = model(batch, split.split_at)
        loss, _ = batch_loss(pred, batch, pairs, model, cfg, prior)
        loss.backward()
        for n, p in params.items():
            if p.grad is not None:
                sums[n] += p.grad.detach().to("cpu") * len(rows)
        total += len(rows)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return {n: s / max(1, total) for n, s in sums.items()}
