"""FedSA-LoRA (Guo et al., "Selective Aggregation for Low-Rank Adaptation in Federated
Learning", ICLR 2025): the A matrices learn what clients share and the B matrices what is
particular to each client's data, so only A travels and is averaged; each client keeps its
own B between rounds (a new client starts from B = 0, as LoRA does).

Where fedgate departs from the paper: gates and the head are shared as under FedAvg. The
server's global model holds no client's B (its B stays at zero), so its evaluation shows
the shared part alone. A client's own model (its B with the global rest) is measured on its
held-out rows after each local round (``local-auc`` in the round's client records) and in the
clients' evaluation (``federated_eval``): the numbers the paper reports.
"""

from __future__ import annotations

from typing import Mapping

import torch

from fedgate.strategies.base import Arrays, LocalRule, Strategy, trainable

PERSONAL_B = "fedsa-b"  # the record a client keeps its B matrices in


class FedSA(Strategy):
    name = "fedsa"
    summary = "only A is averaged and sent; each client keeps its own B (personalized)"
    lora_only = True
    paper = "FedSA-LoRA: Guo et al., ICLR 2025"
    travels_up = travels_down = "A, gates, head (no B)"
    client_records = (PERSONAL_B,)
    refuses_ranks = "each client keeps its own B, so the server has no update B A to map between ranks"

    @classmethod
    def shares(cls, key: str, server_round: int = 0) -> bool:
        return not key.endswith(".lora_B")

    @classmethod
    def prepare_adapter(cls, name: str, module: torch.nn.Module, cfg) -> None:
        module.lora_B.zero_()  # a cached model may hold another client's B: a new client starts at 0

    @classmethod
    def apply_kept(cls, model: torch.nn.Module, kept: Mapping[str, Arrays]) -> None:
        """This client's own B into the model (a new client keeps B = 0)."""
        params = dict(model.named_parameters())
        with torch.no_grad():
            for key, value in (kept.get(PERSONAL_B) or {}).items():
                if key not in params or tuple(params[key].shape) != tuple(value.shape):
                    raise ValueError(f"FedSA: the B this client kept for {key} (shape {tuple(value.shape)}) does "
                                     f"not fit the model")
                params[key].copy_(torch.as_tensor(value).to(params[key]))

    def local_round(self, model: torch.nn.Module, start: Mapping[str, torch.Tensor], cfg,
                    received: Mapping[str, Arrays], kept: Mapping[str, Arrays]) -> LocalRule:
        self.apply_kept(model, kept)
        params = trainable(model)  # a pruned adapter's B is frozen and stays out of what is kept
        own = kept.get(PERSONAL_B) or {}

        def finish(_start: Mapping[str, torch.Tensor]) -> tuple[dict, dict, dict]:
            mine = {k: p.detach().cpu().numpy().copy() for k, p in params.items() if k.endswith(".lora_B")}
            return {}, {PERSONAL_B: mine}, {"fedsa-rounds-kept": float(bool(own))}
        return LocalRule(finish=finish)
