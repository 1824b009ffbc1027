"""RoLoRA (Chen et al., "Robust Federated Finetuning of LLMs via Alternating Optimization of
LoRA", 2025): clients train and send B alone in odd rounds (A frozen) and A alone in even
rounds (B frozen). With one factor fixed by every client, the average of the clients'
products ``B_k A`` (or ``B A_k``) is the product of the averaged factor: FedAvg of the
factors then averages the updates exactly, as FFA-LoRA does, without freezing A for good.
Each direction carries about half of FedAvg's bytes.

Where fedgate departs from the paper: gates and the head train and travel every round. Round
1 trains B, because a fresh adapter's B is zero and A's gradient through it is zero too.
"""

from __future__ import annotations

from fedgate.strategies.base import Strategy


def trains_b(server_round: int) -> bool:
    """Odd rounds train B, even rounds A; round 0 (outside training) is not asked."""
    return server_round % 2 == 1


class RoLoRA(Strategy):
    name = "rolora"
    summary = "B alone trained and sent in odd rounds, A alone in even rounds"
    lora_only = True
    paper = "RoLoRA: Chen et al., 2025"
    travels_up = travels_down = "B (odd rounds) or A (even rounds), gates, head"

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        if cfg.federation.heterogeneous_ranks:
            raise ValueError("federation.strategy=rolora sends one factor against a fixed other one; mapping a "
                             "single factor between ranks is not built, so it refuses federation.heterogeneous-ranks")

    @classmethod
    def shares(cls, key: str, server_round: int = 0) -> bool:
        if server_round < 1:
            return True  # evaluation and the head's statistics: the whole adapter
        frozen = ".lora_A" if trains_b(server_round) else ".lora_B"
        return not key.endswith(frozen)

    @classmethod
    def freezes(cls, tensor: str, server_round: int = 0) -> bool:
        if server_round < 1:
            return False
        return tensor == ("lora_A" if trains_b(server_round) else "lora_B")
