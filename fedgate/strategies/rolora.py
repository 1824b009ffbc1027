"""RoLoRA (Chen et al., "Robust Federated Finetuning of LLMs via Alternating Optimization of
LoRA", 2025): clients train and send back B alone in odd rounds (A frozen) and A alone in
even rounds (B frozen). Every client holds the same frozen factor, the global one the server
sends, so the average of the clients' products ``B_k A`` (or ``B A_k``) is the product of
the averaged factor: FedAvg of the factors averages the updates exactly, as FFA-LoRA does,
without freezing A for good. The uplink is about half of FedAvg's; the downlink carries both
factors, so that no client trains against a stale frozen factor.

Where fedgate departs from the paper: gates and the head train and travel every round (with
gates that differ between clients the average is no longer exact). Round 1 trains B,
because a fresh adapter's B is zero and A's gradient through it is zero too.
"""

from __future__ import annotations

from fedgate.strategies.base import Strategy


def trains_b(server_round: int) -> bool:
    """Odd rounds train B, even rounds A; round 0 (outside training) is not asked."""
    return server_round % 2 == 1


def frozen_factor(server_round: int) -> str:
    return "lora_A" if trains_b(server_round) else "lora_B"


class RoLoRA(Strategy):
    name = "rolora"
    summary = "B alone trained and sent back in odd rounds, A alone in even rounds"
    paper = "RoLoRA: Chen et al., 2025"
    travels_up = "B (odd rounds) or A (even rounds), gates, head: about half of FedAvg's"
    lora_only = True
    refuses_ranks = "it sends one factor against a fixed other one; mapping a single factor between ranks is not built"

    @classmethod
    def returns(cls, key: str, server_round: int = 0) -> bool:
        if server_round >= 1 and key.endswith("." + frozen_factor(server_round)):
            return False
        return super().returns(key, server_round)

    @classmethod
    def freezes(cls, tensor: str, server_round: int = 0) -> bool:
        return server_round >= 1 and tensor == frozen_factor(server_round)
