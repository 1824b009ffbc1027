"""Server optimizers stepping the global state with the mean client delta (the "pseudo-gradient").

After Reddi et al. 2021, "Adaptive Federated Optimization" (Algorithm 2: FedAdagrad, FedAdam,
FedYogi) and Hsu et al. 2019 (FedAvgM). The delta is ``local - global``, so the server *adds* it.
State is explicit, a flat ``{"<slot>/<param name>": float64 array}`` dict, so that it can be
saved in a safetensors checkpoint next to the global state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Mapping

import numpy as np

from fedgate.aggregation.fedavg import Params

OptState = dict[str, np.ndarray]  # "<slot>/<param name>" -> float64 array


def _check_hparam(name: str, value: float, lo: float, hi: float | None = None, lo_open: bool = False) -> None:
    ok = math.isfinite(value) and (value > lo if lo_open else value >= lo) and (hi is None or value < hi)
    if not ok:
        rng = f"> {lo}" if hi is None else f"in [{lo}, {hi})"
        raise ValueError(f"server optimizer: {name} must be {rng}, got {value}")


@dataclass(frozen=True)
class ServerOptimizer:
    """Base: per-key ``(x, delta, slots) -> (new x, new slots)`` in float64, over the keys of delta.

    Keys of params absent from delta (e.g. pruned adapters no longer sent) are returned unchanged,
    as the same arrays, and their state is left as is. Parameters keep their dtype; state is float64.
    """

    name: ClassVar[str] = ""
    slots: ClassVar[tuple[str, ...]] = ()

    def _initial(self, slot: str, shape: tuple[int, ...]) -> np.ndarray:
        return np.zeros(shape, dtype=np.float64)

    def _update(self, x: np.ndarray, d: np.ndarray, s: OptState) -> tuple[np.ndarray, OptState]:
        raise NotImplementedError

    def init(self, params: Mapping[str, np.ndarray]) -> OptState:
        """Fresh state for every key of params (one float64 array per slot and key)."""
        return {f"{slot}/{k}": self._initial(slot, np.shape(v)) for k, v in params.items() for slot in self.slots}

    def step(self, state: Mapping[str, np.ndarray], params: Mapping[str, np.ndarray],
             delta: Mapping[str, np.ndarray]) -> tuple[Params, OptState]:
        """New (params, state) after one server step; the inputs are not mutated."""
        for k, d in delta.items():
            if k not in params:
                raise ValueError(f"{self.name}: delta key {k!r} (shape {np.shape(d)}) is not in params")
            if np.shape(d) != np.shape(params[k]):
                raise ValueError(f"{self.name}: key {k!r}: delta shape {np.shape(d)} != param shape {np.shape(params[k])}")
        new_params: Params = dict(params)
        new_state: OptState = dict(state)
        for k, d in delta.items():
            x = np.asarray(params[k])
            s: OptState = {}
            for slot in self.slots:
                sk = f"{slot}/{k}"
                if sk not in state:
                    raise ValueError(f"{self.name}: state has no {sk!r}; was it made by init() on these params?")
                if np.shape(state[sk]) != x.shape:
                    raise ValueError(f"{self.name}: state {sk!r} has shape {np.shape(state[sk])}, param has {x.shape}")
                s[slot] = np.asarray(state[sk], dtype=np.float64)
            # _update uses no in-place ops, so float64 inputs (not copied by asarray) stay untouched
            x_new, s_new = self._update(np.asarray(x, dtype=np.float64), np.asarray(d, dtype=np.float64), s)
            new_params[k] = x_new.astype(x.dtype)
            new_state.update({f"{slot}/{k}": a for slot, a in s_new.items()})
        return new_params, new_state


@dataclass(frozen=True)
class ServerSGD(ServerOptimizer):
    """``x += lr * delta``; lr = 1 is plain FedAvg."""

    lr: float = 1.0
    name: ClassVar[str] = "sgd"

    def __post_init__(self) -> None:
        _check_hparam("lr", self.lr, 0.0, lo_open=True)

    def _update(self, x: np.ndarray, d: np.ndarray, s: OptState) -> tuple[np.ndarray, OptState]:
        return x + self.lr * d, {}


@dataclass(frozen=True)
class ServerMomentum(ServerOptimizer):
    """FedAvgM (Hsu et al. 2019): ``m = momentum * m + delta; x += lr * m``, m starting at 0."""

    lr: float = 1.0
    momentum: float = 0.9
    name: ClassVar[str] = "avgm"
    slots: ClassVar[tuple[str, ...]] = ("m",)

    def __post_init__(self) -> None:
        _check_hparam("lr", self.lr, 0.0, lo_open=True)
        _check_hparam("momentum", self.momentum, 0.0, 1.0)

    def _update(self, x: np.ndarray, d: np.ndarray, s: OptState) -> tuple[np.ndarray, OptState]:
        m = self.momentum * s["m"] + d
        return x + self.lr * m, {"m": m}


@dataclass(frozen=True)
class ServerAdagrad(ServerOptimizer):
    """FedAdagrad (Reddi et al. 2021, Alg. 2): ``m = b1 m + (1-b1) d; v = v + d^2;
    x += lr m / (sqrt(v) + tau)``, with m = 0 and v = tau^2 at start.

    No bias correction: this is the paper's form, unlike some libraries' Adam/Adagrad."""

    lr: float
    beta1: float = 0.9
    tau: float = 1e-3
    name: ClassVar[str] = "adagrad"
    slots: ClassVar[tuple[str, ...]] = ("m", "v")

    def __post_init__(self) -> None:
        _check_hparam("lr", self.lr, 0.0, lo_open=True)
        _check_hparam("beta1", self.beta1, 0.0, 1.0)
        _check_hparam("tau", self.tau, 0.0, lo_open=True)

    def _initial(self, slot: str, shape: tuple[int, ...]) -> np.ndarray:
        return np.full(shape, self.tau**2 if slot == "v" else 0.0, dtype=np.float64)

    def _second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        return v + d2

    def _update(self, x: np.ndarray, d: np.ndarray, s: OptState) -> tuple[np.ndarray, OptState]:
        m = self.beta1 * s["m"] + (1.0 - self.beta1) * d
        v = self._second_moment(s["v"], d * d)
        return x + self.lr * m / (np.sqrt(v) + self.tau), {"m": m, "v": v}


@dataclass(frozen=True)
class ServerAdam(ServerAdagrad):
    """FedAdam (Reddi et al. 2021): as FedAdagrad but ``v = b2 v + (1-b2) d^2``. No bias correction."""

    beta2: float = 0.99
    name: ClassVar[str] = "adam"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_hparam("beta2", self.beta2, 0.0, 1.0)

    def _second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        return self.beta2 * v + (1.0 - self.beta2) * d2


@dataclass(frozen=True)
class ServerYogi(ServerAdam):
    """FedYogi (Reddi et al. 2021): as FedAdam but ``v = v - (1-b2) d^2 sign(v - d^2)``,
    so v moves additively towards d^2 rather than decaying. No bias correction."""

    name: ClassVar[str] = "yogi"

    def _second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        return v - (1.0 - self.beta2) * d2 * np.sign(v - d2)


SERVER_OPTIMIZERS: tuple[str, ...] = ("sgd", "avgm", "adagrad", "adam", "yogi")


def server_optimizer(name: str, lr: float, momentum: float = 0.9, beta1: float = 0.9,
                     beta2: float = 0.99, tau: float = 1e-3) -> ServerOptimizer:
    """The server optimizer called ``name``; hyperparameters it does not use are ignored (but checked)."""
    if name not in SERVER_OPTIMIZERS:
        raise ValueError(f"unknown server optimizer {name!r}; choose one of {', '.join(SERVER_OPTIMIZERS)}")
    for hp, value in (("momentum", momentum), ("beta1", beta1), ("beta2", beta2)):
        _check_hparam(hp, value, 0.0, 1.0)
    _check_hparam("tau", tau, 0.0, lo_open=True)
    factories = {"sgd": lambda: ServerSGD(lr=lr), "avgm": lambda: ServerMomentum(lr=lr, momentum=momentum),
                 "adagrad": lambda: ServerAdagrad(lr=lr, beta1=beta1, tau=tau),
                 "adam": lambda: ServerAdam(lr=lr, beta1=beta1, beta2=beta2, tau=tau),
                 "yogi": lambda: ServerYogi(lr=lr, beta1=beta1, beta2=beta2, tau=tau)}
    return factories[name]()
