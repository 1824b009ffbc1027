"""What an aggregation strategy asks of a client beyond plain local training.

- Which tensors travel (:func:`shared_keys`): everything trainable, minus ``lora_A`` under
  ``ffa`` (A is frozen from a shared seed), minus ``struct_logit`` with personal gates (routing
  stays local), minus every tensor of a pruned insertion point.
- :func:`configure_adapters` puts a (possibly cached, shared) model into the state a round
  asks for: pruned adapters switched off and frozen, A frozen and re-drawn under ``ffa``.
- FedProx (Li et al., 2020): :func:`proximal_term`, ``mu/2 ||theta - theta_global||^2``.
- SCAFFOLD (Karimireddy et al., 2020): :class:`ControlVariate` corrects every local step by
  ``c - c_i`` and gives the new client control variate (the paper's option II), both in
  the update space of the client's optimizer and learning-rate schedule.
"""

from __future__ import annotations

import math
import zlib
from typing import Callable, Collection, Iterable, Mapping

import torch

from fedgate.aggregation.lora import module_of
from fedgate.config import FedgateConfig
from fedgate.inject import adapter_modules
from fedgate.model import RewardModel

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


class ControlVariate:
    """SCAFFOLD's correction, applied in the local optimizer's update space.

    After every optimizer step, each shared tensor moves by ``-lr_t (c - c_i)`` (``lr_t``:
    its parameter group's learning rate at that step), and at the end of the round the new
    control variate is the paper's option II: ``c_i+ = c_i - c + (x - y) / sum_t lr_t``, the
    mean step direction per unit of learning rate. With SGD this is the paper's update
    ``y <- y - lr (g + c - c_i)``. With AdamW the directions are Adam's normalised steps, so
    the correction is measured in the units it is applied in; adding a raw gradient
    difference to Adam's input instead lets the optimizer rescale it to full-size steps
    wherever the local gradients are small, which is what made SCAFFOLD diverge here."""

    def __init__(self, model: RewardModel, c_global: Mapping[str, torch.Tensor],
                 c_local: Mapping[str, torch.Tensor]) -> None:
        self.c_global, self.c_local = c_global, c_local
        self.params = {n: p for n, p in trainable_params(model).items() if n in c_global}
        self.corrections = {n: (c_global[n] - c_local.get(n, torch.zeros_like(c_global[n]))).to(p.device, p.dtype)
                            for n, p in self.params.items()}
        self.lr_sum = dict.fromkeys(self.params, 0.0)
        self._group_of: dict[str, dict] | None = None

    @torch.no_grad()
    def after_step(self, optimizer) -> None:
        """Move each shared tensor by ``-lr (c - c_i)``; ``optimizer`` has ``param_groups``."""
        if self._group_of is None:
            by_id = {id(p): g for g in optimizer.param_groups for p in g["params"]}
            missing = [n for n, p in self.params.items() if id(p) not in by_id]
            if missing:
                raise ValueError(f"SCAFFOLD: the optimizer does not update {missing[:3]}")
            self._group_of = {n: by_id[id(p)] for n, p in self.params.items()}
        for n, p in self.params.items():
            lr = float(self._group_of[n]["lr"])
            p.sub_(lr * self.corrections[n])
            self.lr_sum[n] += lr

    @torch.no_grad()
    def new_control(self, start: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``c_i+`` from the round's start ``x`` (the global state) and the weights now, ``y``."""
        out = {}
        for n, p in self.params.items():
            c_i = self.c_local.get(n, torch.zeros_like(self.c_global[n])).double()
            moved = (start[n].double() - p.detach().double().cpu()) / self.lr_sum[n] if self.lr_sum[n] > 0 else 0.0
            out[n] = (c_i - self.c_global[n].double() + moved).to(self.c_global[n].dtype)
        return out
