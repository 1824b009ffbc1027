"""Adapter-only state: what clients train, send and checkpoint (never the backbone).

Keys are the model's own parameter names (``backbone.encoder.layer.3.attention.self.query.lora_A``,
``head.weight``), so they are stable across processes that build the model the same way.
Sign convention, written once: ``delta = local - global``.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import torch
from torch import nn

from fedgate.inject import adapter_modules

State = dict[str, torch.Tensor]


def trainable_names(model: nn.Module, extra_prefixes: tuple[str, ...] = ("head.",)) -> list[str]:
    """Names of adapter/gate parameters (or a baseline method's, ``model.method_params``) plus
    parameters under ``extra_prefixes``, in model order."""
    adapter_names = {
        f"{mod_name}.{p}" for mod_name, m in adapter_modules(model).items() for p in m.adapter_names
    } | set(getattr(model, "method_params", ()))
    return [n for n, _ in model.named_parameters() if n in adapter_names or n.startswith(extra_prefixes)]


def gathered(params: list[nn.Parameter], modify: bool = False):
    """Context in which ZeRO-3-partitioned ``params`` hold their full values (written back
    on exit when ``modify``); a no-op for ordinary parameters. DeepSpeed is imported only
    when a parameter is actually partitioned."""
    if not any(hasattr(p, "ds_id") for p in params):
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=0 if modify else None)


def adapter_state(model: nn.Module, extra_prefixes: tuple[str, ...] = ("head.",)) -> State:
    """Detached CPU copies of the adapter/gate/head parameters (gathered under ZeRO-3)."""
    params = dict(model.named_parameters())
    names = trainable_names(model, extra_prefixes)
    with gathered([params[n] for n in names]):
        return {n: params[n].detach().to("cpu", copy=True) for n in names}


def check_compatible(expected: Mapping[str, tuple[int, ...]], state: Mapping[str, object], *, what: str = "state") -> None:
    """Raise KeyError/ValueError naming missing or unexpected keys and shape mismatches."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise KeyError(
            f"{what} does not match the model: missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    for k, shape in expected.items():
        got = tuple(state[k].shape)
        if got != tuple(shape):
            raise ValueError(f"{what}: key {k!r} has shape {got}, the model expects {tuple(shape)}")


@torch.no_grad()
def load_adapter_state(model: nn.Module, state: Mapping[str, torch.Tensor | np.ndarray],
                       extra_prefixes: tuple[str, ...] = ("head.",), *, only: Iterable[str] | None = None) -> None:
    """Copy ``state`` into the model's adapter/head parameters, strictly (keys and shapes).

    ``only`` restricts the load, and the strict key check, to those names (tensors that a
    strategy does not send, e.g. pruned adapters, keep their values)."""
    params = dict(model.named_parameters())
    names = trainable_names(model, extra_prefixes)
    if only is not None:
        wanted = set(only)
        if unknown := sorted(wanted - set(names)):
            raise KeyError(f"state: {unknown[:5]} are not adapter/head parameters of this model")
        names = [n for n in names if n in wanted]
    values = {n: torch.as_tensor(state[n]) for n in names if n in state}
    for n, value in values.items():  # validate everything before touching the model
        if not torch.isfinite(value).all():
            raise ValueError(f"state: key {n!r} contains NaN or Inf")
    with gathered([params[n] for n in names], modify=True):
        check_compatible({n: tuple(params[n].shape) for n in names}, state)
        for n, value in values.items():
            params[n].copy_(value.to(params[n].dtype))


def state_delta(local: Mapping[str, torch.Tensor], global_: Mapping[str, torch.Tensor]) -> State:
    """``local - global`` per key (keys and shapes must agree)."""
    check_compatible({k: tuple(v.shape) for k, v in global_.items()}, local, what="local state")
    return {k: local[k] - global_[k] for k in global_}


def apply_delta(global_: Mapping[str, torch.Tensor], delta: Mapping[str, torch.Tensor]) -> State:
    check_compatible({k: tuple(v.shape) for k, v in global_.items()}, delta, what="delta")
    return {k: global_[k] + delta[k] for k in global_}


def state_nbytes(state: Mapping[str, torch.Tensor | np.ndarray]) -> int:
    """Bytes of the tensors' payload (what a message carries, without framing)."""
    return int(sum(v.numel() * v.element_size() if isinstance(v, torch.Tensor) else v.nbytes for v in state.values()))


def to_numpy(state: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def from_numpy(arrays: Mapping[str, np.ndarray]) -> State:
    # np.asarray(order="C") keeps 0-d arrays 0-d (np.ascontiguousarray would make them 1-d).
    return {k: torch.from_numpy(np.asarray(v, order="C")) for k, v in arrays.items()}


def save_state(path: str | Path, state: Mapping[str, torch.Tensor], metadata: Mapping[str, object] | None = None) -> Path:
    """Write a safetensors file; ``metadata`` (JSON-able) is stored in its header."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"fedgate": json.dumps(dict(metadata or {}), sort_keys=True)}
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=meta)
    return path


def load_state(path: str | Path) -> tuple[State, dict]:
    """Read a safetensors adapter file written by save_state: (state, metadata)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no adapter file at {path}")
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("fedgate", "{}"))
        state = {k: f.get_tensor(k) for k in f.keys()}
    return state, meta
