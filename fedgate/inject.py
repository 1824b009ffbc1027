"""Put gated adapters into a Hugging Face model and freeze everything else.

Modules are chosen by name: a suffix list (``("query", "value")`` matches
``encoder.layer.3.attention.self.query``) or a regex searched in the full name, optionally
restricted to some transformer layers (the first integer in the name is the layer index).
Injection raises when nothing matched, listing the linear layers that exist, so a typo in a
target name cannot silently train nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable

from torch import nn

from fedgate.adapters import AdapterSpec, GatedLoRALinear
from fedgate.families import family, known

_LAYER_INDEX = re.compile(r"\.(\d+)\.")
ALL_LINEAR = "all-linear"  # every linear layer inside the numbered transformer blocks


def default_targets(model_type: str) -> tuple[str, ...]:
    """The family's default adapter targets (fedgate/families.py)."""
    targets = family(model_type).lora_targets
    if not targets:
        raise ValueError(f"no default adapter targets for model_type {model_type!r}; pass target modules "
                         f"explicitly (known defaults: {known('lora_targets')})")
    return targets


def layer_index(name: str) -> int | None:
    """The transformer layer a module name belongs to (first integer component), or None."""
    m = _LAYER_INDEX.search(f".{name}.")
    return int(m.group(1)) if m else None


def _wrappable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def match_targets(
    model: nn.Module,
    targets: Iterable[str] = (),
    *,
    regex: str | None = None,
    layers: Iterable[int] | None = None,
) -> list[str]:
    """Names of the linear modules selected by suffix or regex (and layer), in model order.

    The target ``"all-linear"`` selects every linear layer inside a numbered transformer
    block (attention and MLP projections; not embeddings, poolers or heads)."""
    targets = tuple(targets)
    if not targets and regex is None:
        raise ValueError("give target module suffixes or a regex")
    pattern = re.compile(regex) if regex is not None else None
    wanted_layers = set(layers) if layers is not None else None
    names = []
    wrapped = {n for n, m in model.named_modules() if isinstance(m, GatedLoRALinear)}
    for name, module in model.named_modules():
        if not _wrappable(module) or isinstance(module, GatedLoRALinear):
            continue
        if name.rpartition(".")[0] in wrapped:  # the base_layer of an existing adapter: never nest
            continue
        by_suffix = any(name == t or name.endswith("." + t) for t in targets if t != ALL_LINEAR)
        by_suffix = by_suffix or (ALL_LINEAR in targets and layer_index(name) is not None)
        by_regex = pattern is not None and pattern.search(name) is not None
        if not (by_suffix or by_regex):
            continue
        if wanted_layers is not None and layer_index(name) not in wanted_layers:
            continue
        names.append(name)
    return names


def inject_adapters(
    model: nn.Module,
    spec: AdapterSpec,
    targets: Iterable[str] = (),
    *,
    regex: str | None = None,
    layers: Iterable[int] | None = None,
) -> list[str]:
    """Replace each selected linear layer by a GatedLoRALinear wrapping it; return the names."""
    names = match_targets(model, targets, regex=regex, layers=layers)
    if not names:
        available = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if _wrappable(m)})
        raise ValueError(
            f"no module matched targets={tuple(targets)} regex={regex!r} layers={layers}; "
            f"linear layer names in this model end with: {available}"
        )
    for name in names:
        replace_module(model, name, lambda base: GatedLoRALinear(base, spec))
    return names


def replace_module(model: nn.Module, name: str, wrap: Callable[[nn.Module], nn.Module]) -> None:
    """Put ``wrap(module)`` in the place of the submodule called `name`."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, wrap(getattr(parent, child)))


def adapter_modules(model: nn.Module) -> dict[str, GatedLoRALinear]:
    """All adapters of a model by module name, in model order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, GatedLoRALinear)}


def freeze_except(model: nn.Module, trainable_prefixes: Iterable[str] = (), names: Iterable[str] = ()) -> None:
    """Freeze every parameter but adapter parameters, those under the given prefixes and
    those named in ``names``."""
    prefixes = tuple(trainable_prefixes)
    named = set(names)
    adapter_param_ids = {
        id(p) for m in adapter_modules(model).values() for n in m.adapter_names if n not in m.frozen_param_names
        for p in [getattr(m, n)]
    }
    for name, p in model.named_parameters():
        p.requires_grad_(id(p) in adapter_param_ids or name.startswith(prefixes) or name in named)


@dataclass(frozen=True)
class ParamCount:
    trainable: int
    backbone: int  # parameters of the model outside adapters and trainable extras

    @property
    def percent(self) -> float:
        """Trainable parameters as a percentage of the backbone's."""
        return 100.0 * self.trainable / max(self.backbone, 1)


def count_parameters(model: nn.Module) -> ParamCount:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return ParamCount(trainable=trainable, backbone=frozen)


def reset_gate_records(model: nn.Module) -> None:
    """Start a new token-gate record in every adapter. RewardModel.forward does this itself;
    code that calls a backbone directly must call it once per step."""
    for m in adapter_modules(model).values():
        m.reset_gate_record()
