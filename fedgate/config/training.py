"""How a client (or centralized training) trains: the optimizer and schedule (``[train]``),
the engine that runs it (``[engine]``) and the loss weights (``[loss]``)."""

from __future__ import annotations

from dataclasses import dataclass

from fedgate.config.values import choice, positive


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
    # HetLoRA's rank self-pruning (federation.strategy=hetlora only): a client whose last components
    # (from floor(decay * rank) up) shrank since its last round keeps floor(decay * rank); 0 = off
    rank_prune_decay: float = 0.0
    rank_prune_lambda: float = 0.01  # weight of the regulariser ||B_tail|| ||A_tail|| that shrinks them
    bf16: bool = False  # bf16 autocast: use on GPUs and CPUs with native bf16 (AMX/AVX512-BF16)
    cache_lower_layers: bool = True  # run frozen layers below the first adapter once per example
    cache_dir: str = ""  # keep those cached states on disk here, for other processes (fedgate/hidden_store.py)
    head_init: str = "ridge"  # ridge: fit the head on frozen features first | zero
    eval_every: int = 200  # steps between validation passes (best checkpoint kept); 0 = end only
    seed: int = 0
    device: str = ""  # empty = cuda if available else cpu
    threads: int = 0  # torch CPU threads; 0 = torch's default

    def __post_init__(self) -> None:
        positive("train.batch-size", self.batch_size)
        positive("train.grad-accum", self.grad_accum)
        choice("train.head-init", self.head_init, ("ridge", "zero"))
        choice("train.schedule", self.schedule, ("cosine", "constant"))
        if self.proximal_mu < 0:
            raise ValueError(f"train.proximal-mu must be >= 0, got {self.proximal_mu}")
        if not 0.0 <= self.rank_prune_decay < 1.0:
            raise ValueError(f"train.rank-prune-decay must be in [0, 1) (0 = no self-pruning), got "
                             f"{self.rank_prune_decay}")
        if self.rank_prune_lambda < 0:
            raise ValueError(f"train.rank-prune-lambda must be >= 0, got {self.rank_prune_lambda}")
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
        choice("engine.name", self.name, ("torch", "deepspeed"))
        positive("engine.world-size", self.world_size)
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
class LossWeights:
    lambda_f: float = 1e-4  # Frobenius norm of each low-rank update
    beta: float = 1e-3  # KL of the token gate to its prior
    lambda_s: float = 1e-3  # structural sparsity (sum of structural gates)
    gate_prior: float = 0.5  # default prior where no per-layer prior is given
    alignment: float = 1.0  # weight of the alignment logit's BCE next to the attributes' MSE

    def __post_init__(self) -> None:
        for key in ("lambda_f", "beta", "lambda_s", "alignment"):
            if getattr(self, key) < 0:
                raise ValueError(f"loss.{key.replace('_', '-')} must be >= 0, got {getattr(self, key)}")
        if not 0.0 < self.gate_prior < 1.0:
            raise ValueError(f"loss.gate-prior must be in (0, 1), got {self.gate_prior}")
