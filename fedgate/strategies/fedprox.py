"""FedProx (Li et al., 2020): each client adds ``mu/2 ||theta - theta_global||^2`` over the
tensors the server sent to its local loss (``train.proximal-mu``); the server averages as
FedAvg does."""

from __future__ import annotations

from typing import Callable, Mapping

import torch

from fedgate.strategies.base import Arrays, LocalRule, Strategy, trainable


def proximal_term(model: torch.nn.Module, start: Mapping[str, torch.Tensor], mu: float) -> Callable[[], torch.Tensor]:
    """``mu/2 sum ||p - p_global||^2`` over the trainable tensors that came from the server."""
    pairs = [(p, start[n].to(p.device, p.dtype)) for n, p in trainable(model).items() if n in start]
    if not pairs:
        raise ValueError("FedProx: none of the trainable tensors came from the server")

    def term() -> torch.Tensor:
        return 0.5 * mu * sum(((p - g) ** 2).sum() for p, g in pairs)
    return term


class FedProx(Strategy):
    name = "fedprox"
    paper = "Li et al., MLSys 2020"
    summary = "FedAvg plus a client proximal term `train.proximal-mu`/2 x \\|\\|theta - theta_global\\|\\|^2 (mu 0.01)"

    def local_round(self, model: torch.nn.Module, start: Mapping[str, torch.Tensor], cfg,
                    received: Mapping[str, Arrays], kept: Mapping[str, Arrays]) -> LocalRule:
        return LocalRule(hooks={"extra_loss": proximal_term(model, start, cfg.train.proximal_mu)})
