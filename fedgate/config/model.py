"""What is trained: the backbone and how texts reach it (``[model]``), and the adapters put
into it (``[adapter]``)."""

from __future__ import annotations

from dataclasses import dataclass

from fedgate.config.values import choice, positive

QUANTIZE = ("none", "8bit", "4bit")
GATED_LORA = "gated-lora"
ADAPTER_METHODS = (GATED_LORA, "ia3", "bottleneck", "bitfit")  # the others are baselines (fedgate/peft_methods.py)
RANK_SCALINGS = ("standard", "rslora")  # alpha / r (Hu et al., 2021) | alpha / sqrt(r) (Kalajdzievski, 2023)


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "all-MiniLM-L6-v2"  # hub id, local folder, "all-MiniLM-L6-v2" (offline wheel) or tiny-*
    gguf_file: str = ""
    pairing: str = "separate"  # separate | joint
    pooling: str = ""  # mean | last | mean-last; empty = mean-last for encoders, last for decoders
    targets: tuple[str, ...] = ("all-linear",)  # module-name suffixes, "all-linear", or empty = q/v
    target_regex: str = ""  # when set, selects modules alone (targets are ignored)
    layers: tuple[int, ...] = ()  # transformer layers that get adapters; empty = see top-layers
    top_layers: int = 2  # adapters in the top k layers only (0 = all); lower layers get cached
    max_prompt_tokens: int = 48
    max_response_tokens: int = 128
    # none | 8bit | 4bit: the frozen backbone's linear layers through bitsandbytes (4bit: NF4 with
    # double quantization, as QLoRA); adapters, gates and head stay in float32
    quantize: str = "none"

    def __post_init__(self) -> None:
        choice("model.pairing", self.pairing, ("separate", "joint"))
        choice("model.quantize", self.quantize, QUANTIZE)
        choice("model.pooling", self.pooling, ("", "mean", "last", "mean-last"))
        positive("model.max-prompt-tokens", self.max_prompt_tokens)
        if self.top_layers < 0:
            raise ValueError(f"model.top-layers must be >= 0, got {self.top_layers}")
        positive("model.max-response-tokens", self.max_response_tokens)


@dataclass(frozen=True)
class AdapterSpec:
    """Hyper-parameters of one adapter; shared by every insertion point of a model."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    token_gate: bool = True
    structural_gate: bool = True
    gate_init: float = 2.0  # initial token-gate bias: sigmoid(2) = 0.88, mostly open
    struct_init: float = 2.0  # initial structural logit: sigmoid(2) = 0.88
    # gated-lora | ia3 | bottleneck | bitfit: the other methods are baselines (fedgate.peft_methods);
    # bottleneck uses r as its inner width, and the gate settings apply to gated-lora only
    method: str = "gated-lora"
    # what multiplies B A: "standard" alpha / r, or "rslora" alpha / sqrt(r) (rank-stabilized
    # LoRA), whose update size does not shrink as the rank grows
    rank_scaling: str = "standard"
    # a frozen dense (d_out, d_in) term inside every adapter, filled by the server under
    # federation.strategy=fedex-lora or flora (one base weight's memory per adapted layer)
    dense_residual: bool = False

    def __post_init__(self) -> None:
        choice("adapter.rank-scaling", self.rank_scaling, RANK_SCALINGS)
        if self.method not in ADAPTER_METHODS:
            raise ValueError(f"adapter.method must be one of {', '.join(ADAPTER_METHODS)}; got {self.method!r}")
        if self.r < 1:
            raise ValueError(f"adapter.r (adapter rank) must be >= 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"adapter.dropout must be in [0, 1), got {self.dropout}")

    @property
    def scaling(self) -> float:
        return self.scaling_at(self.r)

    def scaling_at(self, r: int) -> float:
        """The factor on ``B A`` of an adapter of rank ``r`` with this alpha and rank scaling
        (nodes of a federation with heterogeneous ranks share alpha, not the factor)."""
        return self.alpha / (r ** 0.5 if self.rank_scaling == "rslora" else r)
