"""FFA-LoRA (Sun et al., 2024): A is frozen at a value every party draws from the shared seed
(``train.seed`` and the module's name); only B trains and travels, so the averaged B A is the
average of the clients' products, and the uplink is about half of FedAvg's."""

from __future__ import annotations

import math
import zlib

import torch

from fedgate.strategies.base import Strategy


def seeded_lora_a(name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """A's value: drawn like nn.Linear's init (kaiming uniform, a = sqrt(5)) from a generator
    seeded by (seed, module name), so server and every client agree exactly."""
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + zlib.crc32(name.encode()))
    bound = 1.0 / math.sqrt(shape[1])  # kaiming_uniform_(a=sqrt(5)) on a (r, d_in) weight
    return (torch.rand(shape, generator=gen) * 2.0 - 1.0) * bound


class FFA(Strategy):
    name = "ffa"
    summary = "A frozen at a value drawn from `train.seed`; only B is trained and sent (about half the bytes)"
    lora_only = True
    paper = "FFA-LoRA: Sun et al., ICLR 2024"
    travels_up = travels_down = "B, gates, head (no A): about half of FedAvg's"
    refuses_ranks = "it sends B alone against an A each party draws at its own shape; mapping B between ranks is not built"

    @classmethod
    def shares(cls, key: str, server_round: int = 0) -> bool:
        return not key.endswith(".lora_A")

    @classmethod
    def freezes(cls, tensor: str, server_round: int = 0) -> bool:
        return tensor == "lora_A"

    @classmethod
    def prepare_adapter(cls, name: str, module: torch.nn.Module, cfg) -> None:
        module.lora_A.copy_(seeded_lora_a(name, tuple(module.lora_A.shape), cfg.train.seed).to(module.lora_A))
