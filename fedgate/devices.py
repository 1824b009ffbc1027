"""Where a run computes: the device, bf16 autocast, and the process group of a client
trained by several ranks (fedgate/federated/ranks.py)."""

from __future__ import annotations

import os
from contextlib import nullcontext

import torch


def pick_device(name: str = "") -> torch.device:
    """``train.device``, or CUDA when there is one. A rank of a multi-process client sees all
    of its node's GPUs and takes its own, the ``LOCAL_RANK``-th (fedgate/federated/ranks.py)."""
    device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is None and os.environ.get("LOCAL_RANK", "").isdigit():
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def data_parallel_rank() -> tuple[int, int]:
    """(rank, world size) of the process group this process trains in; (0, 1) outside one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def sum_across_ranks(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sums of ``values`` over the ranks of the process group (one all-reduce)."""
    import torch.distributed as dist

    summed = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(summed)
    return summed.tolist()


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
