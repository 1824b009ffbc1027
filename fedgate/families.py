"""What fedgate knows about each model family, by the backbone's ``config.model_type``: one
table, read by the adapter injection (default LoRA targets), the bottleneck baseline (the
sublayer outputs a Houlsby adapter follows) and the reward model (decoders pool their last
token and pad on the left). IA3's targets come from peft's own tables."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    lora_targets: tuple[str, ...] = ()  # default adapter targets (model.targets empty): query and value
    bottleneck_after: tuple[str, ...] = ()  # suffixes of the linear layers a bottleneck adapter follows
    decoder: bool = False


_LLAMA_LIKE = Family(("q_proj", "v_proj"), ("o_proj", "down_proj"), decoder=True)
FAMILIES: dict[str, Family] = {
    "bert": Family(("query", "value"), ("output.dense",)),  # attention.output.dense and the FFN's output.dense
    "roberta": Family(("query", "value"), ("output.dense",)),
    "llama": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "gpt2": Family(("c_attn",), ("c_proj",), decoder=True),  # attn.c_proj and mlp.c_proj
    # decoders fedgate loads without default targets (give model.targets, or all-linear)
    "qwen3": Family(decoder=True),
    "gpt_neox": Family(decoder=True),
    "phi3": Family(decoder=True),
    "gemma": Family(decoder=True),
    "gemma2": Family(decoder=True),
}


def family(model_type: str) -> Family:
    """The family's facts; an unknown family is an encoder with no defaults."""
    return FAMILIES.get(model_type, Family())


def known(what: str) -> list[str]:
    """The families that have a value for ``what`` (a Family field), for error messages."""
    return sorted(name for name, f in FAMILIES.items() if getattr(f, what))
