"""A trained reward model in the Hugging Face stack's own formats.

- ``peft``: a LoRA adapter folder that ``peft.PeftModel.from_pretrained(backbone, DIR)``
  loads. Each adapter's structural gate is a constant, so it is folded into ``lora_B``; an
  input-dependent token gate has no peft equivalent, so a model with token gates is refused.
- ``merged``: the backbone with every adapter folded into its weights (``W + s * B A``),
  saved by ``save_pretrained`` so that ``AutoModel.from_pretrained(DIR)`` loads it, with its
  tokenizer. Refused with token gates for the same reason.

Both write the reward head next to it: ``reward_head.safetensors`` (``weight`` (6, d),
``bias`` (6,)) and ``reward_head.json``, which says how the head's input is pooled from the
backbone's last hidden states and what each output means. ``fedgate score`` scores with any
model, token gates included.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from fedgate.adapters import GatedLoRALinear
from fedgate.data.schema import ATTRIBUTES
from fedgate.errors import InputError
from fedgate.inject import adapter_modules
from fedgate.model import ALIGNMENT, RewardModel
from fedgate.trained import Trained

FORMATS = ("peft", "merged")
HEAD_FILE, HEAD_INFO = "reward_head.safetensors", "reward_head.json"


class ExportError(InputError):
    """The model cannot be written in the asked format; the message says why and what to do."""


def _refuse_token_gates(model: RewardModel, fmt: str) -> None:
    gated = [n for n, m in adapter_modules(model).items() if m.gate_weight is not None]
    if gated:
        raise ExportError(f"cannot export as {fmt}: {len(gated)} adapters have an input-dependent token gate "
                          f"(adapter.token-gate=true), which no constant weight can represent; score with "
                          f"'fedgate score' instead, or train with adapter.token-gate=false")


def _unsupported(model: RewardModel) -> None:
    modules = adapter_modules(model)
    if not modules:
        raise ExportError("the model has no LoRA adapters to export (adapter.method must be gated-lora)")
    conv = [n for n, m in modules.items() if m.is_conv1d]
    if conv:
        raise ExportError(f"cannot export adapters on Conv1D layers ({conv[0]}, ...): export supports nn.Linear")


def clean_backbone(model: RewardModel) -> torch.nn.Module:
    """A copy of the backbone with every adapter removed (each wrapped layer back to its
    base layer): the weights a user loads before attaching the exported adapter."""
    backbone = copy.deepcopy(model.backbone)
    for name, module in list(backbone.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, GatedLoRALinear):
                setattr(module, child_name, child.base_layer)
    return backbone


def _head_files(trained: Trained, out: Path) -> None:
    head = trained.model.head
    save_file({"weight": head.weight.detach().float().contiguous().cpu(),
               "bias": head.bias.detach().float().contiguous().cpu()}, str(out / HEAD_FILE))
    m = trained.cfg.model
    info = {
        "backbone": m.backbone,
        "pairing": m.pairing,
        "pooling": trained.model.pooling,
        "end_tokens": trained.model.end_tokens,
        "max_prompt_tokens": m.max_prompt_tokens,
        "max_response_tokens": m.max_response_tokens,
        "outputs": [*ATTRIBUTES, "alignment_logit"],
        "alignment_output": ALIGNMENT,
        "attribute_scale": "outputs 0-4 are normalised; fedgate.model.to_attribute_scale maps them to 0-4",
        "head_input": ("separate pairing: prompt and response are encoded apart, each pooled "
                       "(mean-last: the mean over tokens concatenated with the last content token), "
                       "and the head reads [r, p * r, |p - r|] of the pooled response r and prompt p "
                       "(fedgate.model.RewardModel.combine)"),
        "decision_threshold": trained.meta.get("decision_threshold"),
    }
    (out / HEAD_INFO).write_text(json.dumps(info, indent=1, default=str) + "\n")


def export_peft(trained: Trained, out: Path) -> Path:
    """Write a peft LoRA adapter folder (structural gates folded into ``lora_B``)."""
    from peft import LoraConfig, get_peft_model

    model = trained.model
    _unsupported(model)
    _refuse_token_gates(model, "peft")
    dense = [n for n, m in adapter_modules(model).items() if m.lora_residual is not None]
    if dense:
        raise ExportError(f"cannot export as peft: {len(dense)} adapters hold a dense update (adapter.dense-residual, "
                          f"from fedex-lora or flora) that a peft LoRA adapter cannot hold; export as merged weights")
    modules = adapter_modules(model)
    prefix = "backbone."
    names = [n[len(prefix):] if n.startswith(prefix) else n for n in modules]
    spec = next(iter(modules.values())).spec
    config = LoraConfig(r=spec.r, lora_alpha=spec.alpha, target_modules=names, lora_dropout=0.0, bias="none",
                        use_rslora=spec.rank_scaling == "rslora")
    peft_model = get_peft_model(clean_backbone(model), config)
    layers = dict(peft_model.base_model.model.named_modules())
    with torch.no_grad():
        for name, module in zip(names, modules.values()):
            target = layers[name]
            if abs(target.scaling["default"] - module.scaling) > 1e-12:
                raise ExportError(f"{name}: fedgate scaling {module.scaling} differs from peft's "
                                  f"{target.scaling['default']} (adapter.rank-scaling={spec.rank_scaling})")
            gate = module.structural_gate() if module.enabled else 0.0  # a pruned adapter contributes nothing
            target.lora_A["default"].weight.copy_(module.lora_A)
            target.lora_B["default"].weight.copy_(module.lora_B * gate)
    out.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(out))
    _head_files(trained, out)
    return out


def export_merged(trained: Trained, out: Path) -> Path:
    """Write the backbone with the adapters merged in, loadable by ``AutoModel``."""
    model = trained.model
    _unsupported(model)
    _refuse_token_gates(model, "merged")
    quantized = [n for n, m in adapter_modules(model).items() if not m.base_layer.weight.is_floating_point()]
    if quantized:
        raise ExportError(f"cannot export as merged: the backbone is quantized (model.quantize; {quantized[0]}, ...) "
                          f"and an adapter cannot be folded into packed weights; use --format peft")
    backbone = clean_backbone(model)
    layers = dict(backbone.named_modules())
    with torch.no_grad():
        for name, module in adapter_modules(model).items():
            if not module.enabled:  # pruned by the federation: contributes nothing
                continue
            base = layers[name[len("backbone."):] if name.startswith("backbone.") else name]
            base.weight.add_(module.delta_weight().to(base.weight.dtype))
    out.mkdir(parents=True, exist_ok=True)
    backbone.save_pretrained(str(out))
    trained.tokenizer.save_pretrained(str(out))
    _head_files(trained, out)
    return out


def export(trained: Trained, fmt: str, out: str | Path) -> Path:
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose from {FORMATS}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out}: exists and is not empty; choose a new folder")
    return export_peft(trained, out) if fmt == "peft" else export_merged(trained, out)
