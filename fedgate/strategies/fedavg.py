"""FedAvg (McMahan et al., 2017): the example-weighted mean of the client deltas, added to
the global state (server SGD at learning rate 1), and ``fedavg-ab``, the same math named for
LoRA: A and B averaged factor by factor, the naive baseline other frameworks ship (FedIT,
Zhang et al., 2024)."""

from __future__ import annotations

from fedgate.strategies.base import Strategy


class FedAvg(Strategy):
    name = "fedavg"
    summary = "example-weighted mean delta, `global += server-lr x mean` (the default)"


class FedAvgAB(FedAvg):
    name = "fedavg-ab"
    summary = ("the same math, named for LoRA comparisons: A and B averaged separately, which is not "
               "averaging B A (FedIT)")
    lora_only = True
    paper = "FedIT: Zhang et al., ICASSP 2024"
