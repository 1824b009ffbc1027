"""Other parameter-efficient methods, as baselines for gated LoRA under the same federation.

``adapter.method`` picks what a client trains inside the frozen backbone (the attribute head
is always trained):

| method       | trainable inside the selected blocks                     | implementation |
|--------------|----------------------------------------------------------|----------------|
| ``gated-lora`` | low-rank A, B plus token / structural gates (the default) | fedgate.adapters |
| ``ia3``      | learned rescaling vectors of keys, values and FFN activations | peft (IA3, its default targets per model family) |
| ``bottleneck`` | a residual down-projection -> GELU -> up-projection of width ``adapter.r`` after each attention and FFN output (Houlsby et al. 2019) | here (peft has no bottleneck adapter) |
| ``bitfit``   | every bias term (Ben Zaken et al. 2022)                    | here (a choice of parameters) |

Plain LoRA is ``gated-lora`` with ``adapter.token-gate=false adapter.structural-gate=false``.
Every method trains only inside the blocks chosen by ``model.layers`` / ``model.top-layers``,
so the frozen layers below can be cached for all of them. The trainable tensors are named by
the model's own parameter names, which is all the federation needs: states, deltas, messages
and the mean-based strategies treat every tensor alike. Strategies that rely on the LoRA
factors or the gates (``exact``, ``ffa``, gate weighting, personal gates, pruning,
heterogeneous ranks) are refused for the other methods when the config is read.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from fedgate.config.model import ADAPTER_METHODS
from fedgate.families import FAMILIES
from fedgate.inject import layer_index, match_targets, replace_module

METHODS = ADAPTER_METHODS

def _family_targets(table: dict[str, tuple[str, ...]] | dict[str, list[str]], model_type: str, what: str) -> list[str]:
    try:
        return list(table[model_type])
    except KeyError:
        raise ValueError(f"adapter.method={what}: no default targets for model_type {model_type!r} "
                         f"(known: {sorted(table)})") from None


class BottleneckAdapter(nn.Module):
    """``y = f(x) + up(gelu(down(f(x))))`` around a frozen sublayer output ``f``.

    ``up`` starts at zero, so a fresh adapter leaves the model unchanged (as LoRA's B does)."""

    def __init__(self, base_layer: nn.Module, width: int) -> None:
        super().__init__()
        self.base_layer = base_layer
        weight = base_layer.weight
        d_out = weight.shape[1] if type(base_layer).__name__ == "Conv1D" else weight.shape[0]
        kw = {"device": weight.device, "dtype": weight.dtype}
        self.down = nn.Linear(d_out, width, **kw)
        self.up = nn.Linear(width, d_out, **kw)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        return y + self.up(torch.nn.functional.gelu(self.down(y.to(self.down.weight.dtype)))).to(y.dtype)


def _bottleneck(backbone: nn.Module, width: int, layers: Iterable[int] | None) -> list[str]:
    bottleneck = {name: list(f.bottleneck_after) for name, f in FAMILIES.items() if f.bottleneck_after}
    names = match_targets(backbone, _family_targets(bottleneck, backbone.config.model_type, "bottleneck"),
                          layers=layers)
    for name in names:
        replace_module(backbone, name, lambda base: BottleneckAdapter(base, width))
    return [f"{n}.{p}" for n in names for p in ("down.weight", "down.bias", "up.weight", "up.bias")]


def _ia3(backbone: nn.Module, layers: Iterable[int] | None) -> list[str]:
    from peft import IA3Config, inject_adapter_in_model
    from peft.utils import (TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING,
                            TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING)

    model_type = backbone.config.model_type
    targets = _family_targets(TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING, model_type, "ia3")
    feedforward = _family_targets(TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING, model_type, "ia3")
    names = match_targets(backbone, targets, layers=layers)
    ff_names = [n for n in names if any(n == t or n.endswith("." + t) for t in feedforward)]
    # full module names, so peft's own suffix matching cannot reach outside the chosen blocks
    inject_adapter_in_model(IA3Config(target_modules=names, feedforward_modules=ff_names), backbone)
    return [n for n, _ in backbone.named_parameters() if ".ia3_l." in n]


def _bitfit(backbone: nn.Module, layers: Iterable[int] | None) -> list[str]:
    wanted = set(layers) if layers is not None else None
    return [n for n, _ in backbone.named_parameters()
            if n.endswith(".bias") and layer_index(n) is not None
            and (wanted is None or layer_index(n) in wanted)]


def inject_method(backbone: nn.Module, method: str, width: int, layers: Iterable[int] | None) -> list[str]:
    """Put ``method``'s trainable parts into ``backbone`` (not gated LoRA: see inject.py);
    returns the trainable parameter names, relative to the backbone, in model order."""
    layers = tuple(layers) if layers is not None else None
    if method == "ia3":
        names = _ia3(backbone, layers)
    elif method == "bottleneck":
        names = _bottleneck(backbone, width, layers)
    elif method == "bitfit":
        names = _bitfit(backbone, layers)
    else:
        raise ValueError(f"inject_method handles {', '.join(METHODS[1:])}; got {method!r}")
    if not names:
        raise ValueError(f"adapter.method={method}: nothing to train in layers {layers} of this "
                         f"{backbone.config.model_type} model")
    return names
