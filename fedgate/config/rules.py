"""Rules that span config sections: which settings cannot be combined, and why.

Each section's own values are checked in its dataclass (fedgate/config/); what depends on
two sections at once (a quantized backbone and ZeRO-3, client-level DP and the settings it
cannot cover) is here, each refusal one line that names the keys and the reason. What a
strategy cannot be combined with is checked by the strategy (fedgate/strategies/)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedgate.config import FedgateConfig
    from fedgate.config.federation import FederationConfig


def check_combinations(cfg: "FedgateConfig") -> None:
    """Every cross-section rule (called when a FedgateConfig is built)."""
    fed = cfg.federation
    if (fed.personal_gates or fed.prune_threshold > 0) and not cfg.adapter.structural_gate:
        what = "federation.personal-gates" if fed.personal_gates else "federation.prune-threshold"
        raise ValueError(f"{what} needs structural gates (adapter.structural-gate=true)")
    if cfg.model.quantize != "none":
        _check_quantized(cfg)
    if cfg.engine.world_size > 1:
        _check_world_size(cfg)
    if fed.dp != "off" and cfg.train.head_init == "ridge":
        raise ValueError(f"federation.dp={fed.dp} does not cover round 0's federated ridge head, fitted from "
                         f"every client's exact feature statistics: use train.head-init=zero")
    if fed.head_refit != "off" and cfg.train.head_init != "ridge":
        raise ValueError(f"federation.head-refit={fed.head_refit} refits the federated ridge head and needs "
                         f"train.head-init=ridge (its round-0 fit)")
    if cfg.adapter.method != "gated-lora":
        lora_only = {"federation.weighting": "gates" if fed.weighting == "gates" else None,
                     "federation.personal-gates": fed.personal_gates or None,
                     "federation.prune-threshold": fed.prune_threshold or None,
                     "federation.heterogeneous-ranks": fed.heterogeneous_ranks or None}
        if used := [f"{k}={v}" for k, v in lora_only.items() if v is not None]:
            raise ValueError(f"adapter.method={cfg.adapter.method} has no LoRA factors or gates; "
                             f"{', '.join(used)} needs adapter.method=gated-lora")


def check_private(fed: "FederationConfig") -> None:
    """What client-level DP cannot be combined with, and why (federation.dp != off)."""
    dp = f"federation.dp={fed.dp}"
    if not fed.clip_norm > 0:
        raise ValueError(f"{dp} needs federation.clip-norm > 0: the clip bounds what one client can change")
    if (fed.dp_noise > 0) == (fed.dp_epsilon > 0):
        raise ValueError(f"{dp} needs exactly one of federation.dp-noise (sigma) or federation.dp-epsilon (a target)")
    if fed.dp_noise < 0 or fed.dp_epsilon < 0 or not 0 < fed.dp_delta < 1:
        raise ValueError(f"{dp}: dp-noise and dp-epsilon must be >= 0 and dp-delta in (0, 1)")
    if fed.weighting == "gates" or (fed.dp == "central" and fed.weighting != "uniform"):
        raise ValueError(f"{dp} needs federation.weighting=uniform: weights by examples or gates change one "
                         f"client's share of the sum and are themselves statistics of its data")
    used = [k for k, on in (("federation.gate-prior=global", fed.gate_prior == "global"),
                            ("federation.prune-threshold", fed.prune_threshold > 0),
                            ("federation.personal-gates", fed.personal_gates),
                            ("federation.heterogeneous-ranks", fed.heterogeneous_ranks)) if on]
    if used:
        raise ValueError(f"{dp}: {used[0]} needs the gate statistics or ranks each client reports, which the "
                         f"mechanism does not cover; under DP clients send no gate statistics (use "
                         f"federation.gate-prior=fixed, no pruning, shared gates, one rank)")


def _check_quantized(cfg: "FedgateConfig") -> None:
    """What a quantized backbone (``model.quantize``) cannot be combined with, and why."""
    q = f"model.quantize={cfg.model.quantize}"
    if cfg.model.backbone.startswith("tiny-"):
        raise ValueError(f"{q} quantizes a pretrained checkpoint as transformers loads it (a hub id or a folder); "
                         f"{cfg.model.backbone} is built in memory: save it with save_pretrained and name its folder")
    if cfg.model.gguf_file:
        raise ValueError(f"{q} cannot quantize a GGUF checkpoint (model.gguf-file): transformers dequantizes GGUF "
                         f"to float32 and refuses a bitsandbytes config beside it; load it once, save_pretrained "
                         f"it to a folder, and name that folder")
    if cfg.adapter.method != "gated-lora":
        raise ValueError(f"{q} needs adapter.method=gated-lora: {cfg.adapter.method} puts trainable tensors inside "
                         f"the backbone's layers, which are packed integers once quantized")
    if cfg.engine.name == "deepspeed" and cfg.engine.zero_stage == 3:
        raise ValueError(f"{q} cannot run under ZeRO-3, which partitions every parameter, the packed quantized "
                         f"weights included (DeepSpeed's parameter hooks fail on them): use engine.zero-stage 0-2, "
                         f"which leave frozen weights alone")


def _check_world_size(cfg: "FedgateConfig") -> None:
    """What a client trained by several ranks (``engine.world-size`` > 1) needs."""
    n, t = cfg.engine.world_size, cfg.train
    if t.batch_size % n:
        raise ValueError(f"train.batch-size={t.batch_size} must be divisible by engine.world-size={n}: every rank "
                         f"takes an equal share of each batch")
    if cfg.engine.timeout_s >= cfg.federation.round_timeout:
        raise ValueError(f"engine.timeout-s={cfg.engine.timeout_s:g} must be below federation.round-timeout="
                         f"{cfg.federation.round_timeout:g}: the ranks must be stopped before the server gives up")
