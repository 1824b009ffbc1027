"""Client training engines: plain torch (fedgate.train.TorchStepper) or DeepSpeed ZeRO.

DeepSpeed lets a client fit a bigger backbone in its accelerator memory: ZeRO-2 with the
optimizer states offloaded to CPU, or ZeRO-3 with the weights themselves kept in CPU memory
and fetched layer by layer. Only the trainable adapter, gate and head parameters go to the
optimizer; the frozen backbone is partitioned (ZeRO-3) but never updated.

This is the only module that imports ``deepspeed``, and only when the engine is used.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedgate.config import FedgateConfig
from fedgate.model import RewardModel
from fedgate.train import TorchStepper, make_optimizer

log = logging.getLogger(__name__)
GIB = 2**30
HEADROOM = 0.9  # plan for at most 90% of a stated budget


# ---------------------------------------------------------------------------- planning
@dataclass(frozen=True)
class EnginePlan:
    stage: int
    offload_optimizer: bool
    offload_params: bool
    estimate_gb: float  # estimated accelerator memory of the chosen layout
    reason: str


def memory_estimates(model: RewardModel, cfg: FedgateConfig) -> dict[str, float]:
    """Rough accelerator-memory needs (GiB) of the three layouts fedgate chooses between.

    frozen weights (2 or 4 bytes each), trainable weights + gradients + Adam moments
    (16 bytes each), and activations of the trained layers (about 68 bytes per token per
    hidden unit per layer in fp32, halved in bf16; attention scores ignored).

    Per rank when ``engine.world-size`` > 1: each rank holds 1/N of a batch's activations,
    and ZeRO-2 keeps 1/N of the gradients."""
    t, m = cfg.train, cfg.model
    world = cfg.engine.world_size
    scale = 0.5 if t.bf16 else 1.0
    # bf16 halves float weights; quantized ones (packed integers) are already as small as they get
    frozen = sum(p.numel() * p.element_size() * (scale if p.is_floating_point() else 1.0)
                 for p in model.parameters() if not p.requires_grad)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    conf = model.backbone.config
    hidden = getattr(conf, "hidden_size", 0) or getattr(conf, "n_embd", 0)
    layers = getattr(conf, "num_hidden_layers", 0) or getattr(conf, "n_layer", 1)
    trained_layers = m.top_layers if m.top_layers and cfg.train.cache_lower_layers else layers
    tokens = t.batch_size * (m.max_prompt_tokens + m.max_response_tokens)
    activations = 68.0 * scale * tokens * hidden * trained_layers / world
    # ZeRO-3 with parameter offload holds on the device about one module's weights at a time
    largest_module = max(sum(p.numel() * p.element_size() for p in mod.parameters(recurse=False))
                         for mod in model.modules()) * scale
    return {
        "zero0": (frozen + 16 * trainable + activations) / GIB,
        "zero2_offload": (frozen + (4 + 4 / world) * trainable + activations) / GIB,
        "zero3_offload": (largest_module + 8 * trainable + activations) / GIB,
    }


def plan_engine(model: RewardModel, cfg: FedgateConfig) -> EnginePlan:
    """The ZeRO layout for this client: explicit (engine.zero-stage), or the least
    offloading layout whose estimate fits engine.memory-gb."""
    e = cfg.engine
    est = memory_estimates(model, cfg)
    if e.zero_stage >= 0:
        key = "zero3_offload" if e.offload_params else "zero2_offload" if e.offload_optimizer else "zero0"
        return EnginePlan(e.zero_stage, e.offload_optimizer, e.offload_params, est[key], "engine.zero-stage")
    if not e.memory_gb:
        return EnginePlan(0, False, False, est["zero0"], "no memory budget (engine.memory-gb = 0)")
    budget = e.memory_gb * HEADROOM
    layouts = [("zero0", EnginePlan(0, False, False, est["zero0"], "")),
               ("zero2_offload", EnginePlan(2, True, False, est["zero2_offload"], "")),
               ("zero3_offload", EnginePlan(3, True, True, est["zero3_offload"], ""))]
    if cfg.model.quantize != "none":  # ZeRO-3 cannot partition packed weights (see fedgate/config/rules.py)
        layouts = layouts[:2]
    for name, plan in layouts:
        if plan.estimate_gb <= budget:
            return EnginePlan(plan.stage, plan.offload_optimizer, plan.offload_params, plan.estimate_gb,
                              f"{name} needs ~{plan.estimate_gb:.2f} GiB <= {budget:.2f} GiB (90% of the budget)")
    name, plan = layouts[-1]
    log.warning("no ZeRO layout fits engine.memory-gb=%g (%s needs ~%.2f GiB); using it anyway",
                e.memory_gb, name, plan.estimate_gb)
    return EnginePlan(plan.stage, plan.offload_optimizer, plan.offload_params, plan.estimate_gb,
                      "nothing fits the budget; the most frugal layout")


# ---------------------------------------------------------------------------- DeepSpeed config
_TOP_LEVEL_KEYS = {
    "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping",
    "zero_optimization", "bf16", "fp16", "zero_force_ds_cpu_optimizer", "steps_per_print", "wall_clock_breakdown",
    "zero_allow_untested_optimizer", "optimizer", "scheduler", "activation_checkpointing", "flops_profiler",
    "communication_data_type", "prescale_gradients", "gradient_predivide_factor", "sparse_gradients",
    "memory_breakdown", "dump_state", "seq_parallel_communication_data_type", "data_types", "checkpoint",
    "tensorboard", "wandb", "csv_monitor", "comms_logger", "compile", "timers", "aio", "amp",
}


def deepspeed_config(cfg: FedgateConfig, plan: EnginePlan, world_size: int = 1) -> dict[str, Any]:
    """The DeepSpeed config dict for a plan. With ``world_size`` ranks each one takes
    ``batch-size / world_size`` rows of every batch (DeepSpeed checks train = micro x accum x world)."""
    t = cfg.train
    zero: dict[str, Any] = {"stage": plan.stage}
    if plan.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    if plan.offload_params:
        zero["offload_param"] = {"device": "cpu"}
    return {
        "train_micro_batch_size_per_gpu": t.batch_size // world_size,
        "gradient_accumulation_steps": t.grad_accum,
        "train_batch_size": t.batch_size * t.grad_accum,
        "gradient_clipping": t.max_grad_norm,
        "zero_optimization": zero,
        # train.bf16 is fit()'s autocast; DeepSpeed's own bf16 would cast the frozen backbone
        "bf16": {"enabled": False},
        "zero_allow_untested_optimizer": True,  # fedgate's AdamW groups (LoRA factors / other adapter tensors / head)
        "zero_force_ds_cpu_optimizer": False,  # offload with a client optimizer
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def load_deepspeed_config(path: str | Path, cfg: FedgateConfig, world_size: int = 1) -> dict[str, Any]:
    """Read and check a DeepSpeed JSON file; errors name the file, line or key. Batch keys it
    leaves out are filled from train.* (each of ``world_size`` ranks takes batch-size / world_size rows)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"engine.deepspeed-config: no file {path}")
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg})") from None
    if not isinstance(ds, dict):
        raise ValueError(f"{path}: the top level must be a JSON object, got {type(ds).__name__}")
    unknown = sorted(set(ds) - _TOP_LEVEL_KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown DeepSpeed keys {unknown}")
    zero = ds.get("zero_optimization", {})
    if not isinstance(zero, dict):
        raise ValueError(f"{path}: 'zero_optimization' must be an object")
    stage = zero.get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"{path}: zero_optimization.stage must be 0, 1, 2 or 3, got {stage!r}")
    if stage == 3 and cfg.model.quantize != "none":
        raise ValueError(f"{path}: zero_optimization.stage 3 partitions the packed weights of model.quantize="
                         f"{cfg.model.quantize}, which DeepSpeed cannot; use stage 0-2")
    if "offload_param" in zero and stage != 3:
        raise ValueError(f"{path}: zero_optimization.offload_param needs stage 3, got stage {stage}")
    for key in ("fp16", "bf16"):
        if isinstance(ds.get(key), dict) and ds[key].get("enabled"):
            raise ValueError(f"{path}: '{key}' casts the whole model, frozen backbone included; "
                             f"use train.bf16=true (autocast) instead")
    t = cfg.train
    ds.setdefault("train_micro_batch_size_per_gpu", t.batch_size // world_size)
    ds.setdefault("gradient_accumulation_steps", t.grad_accum)
    micro, accum = ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]
    ds.setdefault("train_batch_size", micro * accum * world_size)
    if ds["train_batch_size"] != micro * accum * world_size:
        raise ValueError(f"{path}: train_batch_size {ds['train_batch_size']} != train_micro_batch_size_per_gpu "
                         f"{micro} x gradient_accumulation_steps {accum} x {world_size} process(es) "
                         f"(engine.world-size)")
    if "optimizer" in ds or "scheduler" in ds:
        raise ValueError(f"{path}: 'optimizer'/'scheduler' are fedgate's (train.lr-*, warmup + cosine); remove them")
    ds.setdefault("zero_allow_untested_optimizer", True)
    ds.setdefault("zero_force_ds_cpu_optimizer", False)
    ds.setdefault("steps_per_print", 10**9)
    return ds


def _accelerator() -> str:
    return "cuda" if torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR", "") != "cpu" else "cpu"


# ---------------------------------------------------------------------------- DeepSpeed engine
def _init_process_group() -> str:
    """The process group DeepSpeed trains in. A rank of a multi-process client
    (fedgate/federated/ranks.py) has created its group already, and DeepSpeed wraps it. Any
    other process gets a world-size-1 group without a TCP port (simulation actors of many
    clients share a host), created once per process: DeepSpeed caches its groups, so it is
    never destroyed and re-created. Returns the backend."""
    import torch.distributed as dist

    for key, value in (("LOCAL_RANK", "0"), ("RANK", "0"), ("WORLD_SIZE", "1")):
        os.environ.setdefault(key, value)
    import deepspeed.ops

    # DeepSpeed JIT-builds a shared-memory collective op on its first initialize (about 2 min
    # on a cold cache here) whatever the world size; one process never needs it.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if dist.is_initialized():
        return dist.get_backend()
    backend = "nccl" if _accelerator() == "cuda" else "gloo"
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return backend


class DeepSpeedStepper:
    """The DeepSpeed training engine behind fit()'s stepper interface.

    Built once per local round and closed (``engine.destroy()``) at its end; the process
    group outlives it. DeepSpeed applies gradient accumulation and clipping itself."""

    def __init__(self, model: RewardModel, cfg: FedgateConfig) -> None:
        if _accelerator() == "cpu":
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        _init_process_group()
        import deepspeed
        import torch.distributed as dist

        world = dist.get_world_size()
        if world != cfg.engine.world_size:
            raise RuntimeError(f"this process trains in a group of {world} rank(s), but engine.world-size is "
                               f"{cfg.engine.world_size}: ranks are started by fedgate.federated.ranks.run_ranks")
        self.plan = plan_engine(model, cfg)
        if cfg.engine.deepspeed_config:
            ds_cfg = load_deepspeed_config(cfg.engine.deepspeed_config, cfg, world)
        else:
            ds_cfg = deepspeed_config(cfg, self.plan, world)
            if self.plan.stage == 3:
                # Keep every trainable tensor whole (penalties and gate statistics read them
                # outside the forward pass); frozen weights larger than that are partitioned.
                largest = max(p.numel() for p in model.parameters() if p.requires_grad)
                ds_cfg["zero_optimization"]["stage3_param_persistence_threshold"] = largest + 1
        log.info("DeepSpeed ZeRO-%d (offload optimizer %s, params %s): %s",
                 ds_cfg["zero_optimization"].get("stage", 0), self.plan.offload_optimizer, self.plan.offload_params,
                 "config file " + cfg.engine.deepspeed_config if cfg.engine.deepspeed_config else self.plan.reason)
        self.config = ds_cfg
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=model, optimizer=make_optimizer(model, cfg),
                                                                 config=ds_cfg)

    @property
    def param_groups(self) -> list[dict]:
        return self.engine.optimizer.param_groups

    def forward(self, model: RewardModel, batch: dict, split_at: int | None) -> torch.Tensor:
        return self.engine(batch, split_at)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)
        self.engine.step()  # an optimizer step only at accumulation boundaries

    def step(self) -> None:
        """Nothing to do: DeepSpeed stepped at the boundary in backward()."""

    def close(self) -> None:
        module = self.engine.module
        self.engine.destroy()
        _release_zero3_module(module)


def _release_zero3_module(module: torch.nn.Module) -> None:
    """Let a destroyed ZeRO-3 engine's model be freed. DeepSpeed 0.19.8 keeps two references
    for the life of the process: its parameter offload appends the model to a module-level
    stack when the engine is built and never takes it off, and the coordinator's
    ``__params_to_release`` is an ``lru_cache`` on a method, keyed by (coordinator, submodule).
    Each round's model, partitioned weights and hooks stayed alive: +150 MB over 8 MiniLM
    rounds (``python -m simulations.bench_engine --rounds 8``)."""
    try:
        from deepspeed.runtime.zero import parameter_offload
        from deepspeed.runtime.zero.partitioned_param_coordinator import PartitionedParameterCoordinator
    except ImportError:  # another DeepSpeed layout: nothing we know how to release
        return
    stack = getattr(parameter_offload, "FWD_MODULE_STACK", None)
    if isinstance(stack, list):
        stack[:] = [m for m in stack if m is not module]
    cached = vars(PartitionedParameterCoordinator).get("_PartitionedParameterCoordinator__params_to_release")
    inner = [c.cell_contents for c in (getattr(cached, "__closure__", None) or ())]  # under an NVTX wrapper
    for fn in (cached, *inner):
        if hasattr(fn, "cache_clear"):
            fn.cache_clear()  # a cache only: entries of live engines are recomputed on demand

def make_stepper(model: RewardModel, cfg: FedgateConfig):
    """The configured training engine for one fit(); call ``close_stepper`` after it."""
    if cfg.engine.name == "deepspeed":
        return DeepSpeedStepper(model, cfg)
    return TorchStepper(model, cfg)


def close_stepper(stepper) -> None:
    close = getattr(stepper, "close", None)
    if close is not None:
        close()
