"""Loss terms of gated LoRA training.

    L = L_task + lambda_f * sum_l ||B_l A_l||_F^2 + beta * sum_l KL(q_l || p_l) + lambda_s * sum_l s_l
    L_task = MSE(attributes) + alignment * BCE(alignment logit, aligned)      (rated rows)
    L_task = mean(-log sigmoid(score_chosen - score_rejected))                (preference pairs)

q_l is the Bernoulli whose parameter is layer l's mean token gate on the batch; p_l is the
prior (a constant, or in the federation the server's global gate profile from the last round).
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from fedgate.config.training import LossWeights
from fedgate.inject import adapter_modules

_EPS = 1e-6


def task_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None,
              alignment: float = 1.0) -> torch.Tensor:
    """Mean squared error over the attributes (normalised scale, the first 5 columns) plus
    ``alignment`` times the binary cross-entropy of the alignment logit (column 6) against
    the aligned / misaligned target (+1 / -1, see fedgate.model.head_targets).

    The attributes' MSE alone spends the head on orderings the alignment score does not need
    (off-topic at 0 vs corrupted at 1, 3 vs 4); the BCE term trains the score for the
    decision it is judged on. With 5-column inputs only the MSE is computed."""
    err = (pred[:, :5].float() - target[:, :5].float()) ** 2
    if weights is not None:
        err = err * weights
    loss = err.mean()
    if alignment and pred.shape[1] > 5 and target.shape[1] > 5:
        aligned = (target[:, 5].float() + 1.0) / 2.0
        loss = loss + alignment * nn.functional.binary_cross_entropy_with_logits(pred[:, 5].float(), aligned)
    return loss


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None) -> torch.Tensor:
    """Bradley-Terry loss of preference pairs, ``mean(-log sigmoid(r_chosen - r_rejected - m))``:
    the negative log-likelihood that the chosen reply wins when P(win) = sigmoid of the score
    difference. ``margin`` (optional, >= 0 per pair) asks a clearer preference to be won by
    more, as in Llama 2's margin loss."""
    diff = chosen.float() - rejected.float()
    if margin is not None:
        diff = diff - margin.float()
    return nn.functional.softplus(-diff).mean()


def bernoulli_kl(q: torch.Tensor, p: torch.Tensor | float) -> torch.Tensor:
    """KL(Bern(q) || Bern(p)), elementwise."""
    q = q.clamp(_EPS, 1 - _EPS)
    p = torch.as_tensor(p, dtype=q.dtype, device=q.device).clamp(_EPS, 1 - _EPS)
    return q * torch.log(q / p) + (1 - q) * torch.log((1 - q) / (1 - p))


def frobenius_penalty(model: nn.Module) -> torch.Tensor:
    terms = [m.last_frobenius_sq for m in adapter_modules(model).values() if m.enabled]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def gate_kl(model: nn.Module, prior: Mapping[str, float] | float, default: float = 0.5) -> torch.Tensor:
    """Sum over adapters of KL(mean token gate on the last batch || prior for that adapter);
    adapters missing from a per-layer ``prior`` mapping use ``default``."""
    terms = []
    for name, m in adapter_modules(model).items():
        if m.last_token_gate_mean is None or not m.enabled:
            continue
        p = prior.get(name, default) if isinstance(prior, Mapping) else prior
        terms.append(bernoulli_kl(m.last_token_gate_mean, p))
    return torch.stack(terms).sum() if terms else torch.zeros(())


def shared_gate_kl(model: nn.Module, totals: list[float], prior: Mapping[str, float] | float, default: float,
                   world: int, counted: bool = True) -> tuple[float, torch.Tensor | float]:
    """:func:`gate_kl` of a batch shared by ``world`` ranks, each holding the token-gate record
    of its own rows; ``totals`` are every adapter's (sum, count) summed over the ranks, in
    model order. Returns the KL at the whole batch's mean gates, and this rank's term whose
    gradient, averaged over the ranks, is that KL's gradient:
    ``world * KL'(q) * sum_r / count`` per adapter, where q = sum / count of the whole batch.
    ``counted=False``: this rank forwarded a placeholder row, which adds nothing."""
    value, terms = 0.0, []
    for i, (name, m) in enumerate(adapter_modules(model).items()):
        total, count = totals[2 * i], totals[2 * i + 1]
        if count == 0 or not m.enabled:
            continue
        p = prior.get(name, default) if isinstance(prior, Mapping) else prior
        q = torch.tensor(total / count, dtype=torch.float64, requires_grad=True)
        kl = bernoulli_kl(q, p)
        (slope,) = torch.autograd.grad(kl, q)
        value += float(kl)
        own_sum = m.token_gate_record[0]
        if counted and own_sum is not None:
            terms.append(own_sum * (float(slope) * world / count))
    return value, torch.stack(terms).sum() if terms else 0.0


def structural_sparsity(model: nn.Module) -> torch.Tensor:
    terms = [m.last_structural_gate for m in adapter_modules(model).values()
             if m.struct_logit is not None and m.enabled]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def total_loss(pred: torch.Tensor, target: torch.Tensor, model: nn.Module, w: LossWeights,
               prior: Mapping[str, float] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The full objective on rated rows and its parts (as floats, for logging)."""
    return regularized_loss(task_loss(pred, target, alignment=w.alignment), model, w, prior)


def regularized_loss(task: torch.Tensor, model: nn.Module, w: LossWeights,
                     prior: Mapping[str, float] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """A task loss (rated rows' or preference pairs') plus the adapters' regularisers, and
    the parts as floats."""
    parts = {"task": task}
    if w.lambda_f:
        parts["frobenius"] = w.lambda_f * frobenius_penalty(model)
    if w.beta:
        parts["gate_kl"] = w.beta * gate_kl(model, prior if prior is not None else w.gate_prior, default=w.gate_prior)
    if w.lambda_s:
        parts["sparsity"] = w.lambda_s * structural_sparsity(model)
    loss = sum(v.to(parts["task"].device) for v in parts.values())
    return loss, {k: float(v.detach()) for k, v in parts.items()}
