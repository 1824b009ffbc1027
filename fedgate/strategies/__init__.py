"""The aggregation strategies, one unit each: ``federation.strategy`` names one of them.

Every module of this package defines its strategies as subclasses of
:class:`fedgate.strategies.base.Strategy` with a ``name``; the registry finds them, so adding
a strategy is one new module (and its test) that nothing else names.

    get(name)      the strategy's class (settings checks, client-side behaviour)
    create(fed)    a strategy for one run, holding the server's state between rounds
    check(cfg)     refuse settings a strategy cannot be combined with
    names()        every registered name
    table()        one markdown line per strategy (``fedgate strategies``)
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

from fedgate.strategies.base import Aggregated, LocalRule, RoundInputs, Strategy

if TYPE_CHECKING:
    from fedgate.config import FederationConfig, FedgateConfig

__all__ = ["Aggregated", "LocalRule", "RoundInputs", "Strategy", "check", "create", "get", "names", "table"]

_REGISTRY: dict[str, type[Strategy]] = {}


def _all_subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_all_subclasses(sub)]
    return out


def _registry() -> dict[str, type[Strategy]]:
    if not _REGISTRY:
        for info in pkgutil.iter_modules(__path__):
            if info.name != "base":
                importlib.import_module(f"{__name__}.{info.name}")
        found: dict[str, type[Strategy]] = {}
        for cls in _all_subclasses(Strategy):
            if not cls.name:
                continue
            if cls.name in found and found[cls.name] is not cls:
                raise RuntimeError(f"two strategies are named {cls.name!r}: {found[cls.name].__module__}."
                                   f"{found[cls.name].__name__} and {cls.__module__}.{cls.__name__}")
            found[cls.name] = cls
        _REGISTRY.update(sorted(found.items(), key=lambda item: (item[0] != "fedavg", item[0])))  # default first
    return _REGISTRY


def names() -> tuple[str, ...]:
    return tuple(_registry())


def get(name: str) -> type[Strategy]:
    registry = _registry()
    if name not in registry:
        raise ValueError(f"federation.strategy must be one of {tuple(registry)}, got {name!r}")
    return registry[name]


def create(fed: "FederationConfig") -> Strategy:
    return get(fed.strategy)(fed)


def check(cfg: "FedgateConfig") -> "FedgateConfig":
    """``cfg`` if its strategy exists and accepts the other settings; else one ValueError
    line naming the keys and the reason."""
    get(cfg.federation.strategy).check(cfg)
    return cfg


def table() -> str:
    """A markdown table of the registered strategies."""
    lines = ["| strategy | what it does | from | uplink per client | downlink per client | heterogeneous ranks |",
             "|---|---|---|---|---|---|"]
    lines += [f"| `{name}` | {cls.summary} | {cls.paper} | {cls.travels_up} | {cls.travels_down} | {ranks(cls)} |"
              for name, cls in _registry().items()]
    return "\n".join(lines)


def ranks(cls: type[Strategy]) -> str:
    """Whether a rule admits ``federation.heterogeneous-ranks``, in a few words."""
    if cls.refuses_ranks:
        return "no"
    return "yes" if cls.admits_larger_ranks else "up to `adapter.r`"
