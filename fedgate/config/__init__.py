"""One typed configuration, built from flat keys in one place.

Flower run configs are flat ``{key: bool | int | float | str}``; nested TOML tables arrive as
dotted keys. fedgate's keys are ``section.field`` with dashes, e.g. ``adapter.r``,
``train.lr-adapter``, ``model.layers``. Lists are comma-separated strings (``"query,value"``;
layer lists also take ranges: ``"3-5"``). Unknown keys and bad values raise with the key named.

Each section is one dataclass that owns its defaults and checks its own values:
``model.py`` (``[model]``, ``[adapter]``), ``training.py`` (``[train]``, ``[engine]``,
``[loss]``), ``data.py``, ``federation.py``, ``shards.py``, ``server.py``; ``rules.py`` holds
the checks that span sections, ``presets.py`` the named sizings (``preset =
"federation-cpu"``), ``renamed.py`` the keys that moved (an old name is refused with the new
one), and ``values.py`` how a flat value is read. What a strategy cannot be combined with is checked
by the strategy (fedgate/strategies/).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, get_type_hints

from fedgate.config.data import DataConfig
from fedgate.config.federation import HEAD_REFIT, FederationConfig
from fedgate.config.model import ADAPTER_METHODS, GATED_LORA, QUANTIZE, AdapterSpec, ModelConfig
from fedgate.config.presets import PRESET_KEY, PRESETS, with_preset
from fedgate.config.renamed import refuse_renamed
from fedgate.config.rules import check_combinations
from fedgate.config.server import ServerConfig
from fedgate.config.shards import ShardsConfig
from fedgate.config.training import EngineConfig, LossWeights, TrainConfig
from fedgate.config.values import coerce

__all__ = ["ADAPTER_METHODS", "GATED_LORA", "HEAD_REFIT", "PRESETS", "PRESET_KEY", "QUANTIZE", "AdapterSpec", "DataConfig", "EngineConfig",
           "FederationConfig", "FedgateConfig", "LossWeights", "ModelConfig", "ServerConfig", "ShardsConfig",
           "TrainConfig"]


@dataclass(frozen=True)
class FedgateConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    adapter: AdapterSpec = field(default_factory=AdapterSpec)
    loss: LossWeights = field(default_factory=LossWeights)
    train: TrainConfig = field(default_factory=TrainConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    data: DataConfig = field(default_factory=DataConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    shards: ShardsConfig = field(default_factory=ShardsConfig)
    server: ServerConfig = field(default_factory=ServerConfig)

    def __post_init__(self) -> None:
        """Checks across sections (fedgate/config/rules.py)."""
        check_combinations(self)

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any], *, ignore_unknown_sections: bool = True) -> "FedgateConfig":
        """Build from ``{"section.field-name": value}``; keys of other sections are ignored
        (Flower run configs also carry federation keys), unknown fields of ours raise. A
        ``preset`` key fills the keys not given with a named sizing (fedgate/config/presets.py)."""
        sections = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, dict[str, Any]] = {name: {} for name in sections}
        for key, raw in with_preset(dict(flat)).items():
            refuse_renamed(key)
            section, _, name = key.partition(".")
            if section not in sections:
                if ignore_unknown_sections:
                    continue
                raise KeyError(f"unknown config section in key {key!r}; sections: {sorted(sections)}")
            section_type = _section_type(sections[section])
            fields = {f.name.replace("_", "-"): f for f in dataclasses.fields(section_type)}
            if name not in fields:
                raise KeyError(f"unknown config key {key!r}; valid keys in [{section}]: {sorted(fields)}")
            hint = get_type_hints(section_type)[fields[name].name]
            values[section][fields[name].name] = coerce(key, raw, hint)
        built = {}
        for name, f in sections.items():
            section_type = _section_type(f)
            try:
                built[name] = section_type(**values[name])
            except (TypeError, ValueError) as e:
                raise ValueError(f"invalid [{name}] config: {e}") from e
        return cls(**built)

    def to_flat(self) -> dict[str, Any]:
        """The inverse of from_flat, with Flower-compatible scalar values."""
        out: dict[str, Any] = {}
        for section in dataclasses.fields(self):
            obj = getattr(self, section.name)
            for f in dataclasses.fields(obj):
                v = getattr(obj, f.name)
                out[f"{section.name}.{f.name.replace('_', '-')}"] = ",".join(map(str, v)) if isinstance(v, tuple) else v
        return out


def _section_type(f: dataclasses.Field) -> type:
    return f.default_factory  # type: ignore[return-value]
