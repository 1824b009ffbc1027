"""Benchmark: peak memory and step time of the training engines on one model and batch.

    python -m simulations.bench_engine [--backbone all-MiniLM-L6-v2] [--steps 6] [--set KEY=VALUE ...]

Each variant runs in a fresh process (so peaks do not mix): the plain torch engine, then
DeepSpeed ZeRO-0, ZeRO-2, ZeRO-2 with optimizer offload, ZeRO-3, and ZeRO-3 with parameter
and optimizer offload. Reported: median step time after one warm-up step, and peak memory
(on CUDA ``torch.cuda.max_memory_allocated``; on CPU the process's peak RSS, where offload
cannot save anything because "device" and "CPU" memory are the same RAM).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

VARIANTS = {
    "torch": {"engine.name": "torch"},
    "zero0": {"engine.name": "deepspeed", "engine.zero-stage": 0},
    "zero2": {"engine.name": "deepspeed", "engine.zero-stage": 2},
    "zero2+offload": {"engine.name": "deepspeed", "engine.zero-stage": 2, "engine.offload-optimizer": True},
    "zero3": {"engine.name": "deepspeed", "engine.zero-stage": 3},
    "zero3+offload": {"engine.name": "deepspeed", "engine.zero-stage": 3, "engine.offload-optimizer": True,
                      "engine.offload-params": True},
}


def run_one(variant: str, backbone: str, steps: int, extra: dict) -> dict:
    """Train ``steps`` steps on one repeated batch with one engine variant (this process)."""
    import numpy as np
    import torch

    from fedgate.batching import encode_split, make_batch
    from fedgate.config import FedgateConfig
    from fedgate.data import build_embedded_dataset
    from fedgate.engine import close_stepper, make_stepper
    from fedgate.losses import total_loss
    from fedgate.model import build_reward_model, to_normalised_scale

    cfg = FedgateConfig.from_flat({"model.backbone": backbone, "train.batch-size": 16, "model.top-layers": 0,
                                   "train.cache-lower-layers": False, **extra, **VARIANTS[variant]})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model, tok = build_reward_model(cfg.model, cfg.adapter)
    model.to(device)
    split = encode_split(build_embedded_dataset(0)["train"].select(range(cfg.train.batch_size)), tok, cfg.model)
    batch = make_batch(split, np.arange(cfg.train.batch_size), tok.pad_token_id, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    stepper = make_stepper(model, cfg)
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        pred = stepper.forward(model, batch, None)
        loss, _ = total_loss(pred.float(), to_normalised_scale(batch["labels"]), model, cfg.loss)
        stepper.backward(loss)
        stepper.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    close_stepper(stepper)
    return {"variant": variant, "step_s": float(np.median(times[1:])), "peak_mb": peak, "device": device.type,
            "loss": float(loss.detach())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="all-MiniLM-L6-v2")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--one", choices=list(VARIANTS), help=argparse.SUPPRESS)  # internal: one variant, JSON out
    args = p.parse_args(argv)
    extra = dict(kv.split("=", 1) for kv in args.set)
    if args.one:
        print(json.dumps(run_one(args.one, args.backbone, args.steps, extra)))
        return 0
    rows = []
    for variant in VARIANTS:
        cmd = [sys.executable, "-m", "simulations.bench_engine", "--one", variant, "--backbone", args.backbone,
               "--steps", str(args.steps), *(f"--set={kv}" for kv in args.set)]
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        if done.returncode != 0:
            print(f"{variant}: failed\n{done.stderr[-1500:]}", file=sys.stderr)
            return 1
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"{variant:>14}: step {rows[-1]['step_s']:.3f} s, peak {rows[-1]['peak_mb']:.0f} MiB", flush=True)
    base = next(r for r in rows if r["variant"] == "zero0")
    what = "peak GPU memory (max_memory_allocated)" if base["device"] == "cuda" else "peak RSS (CPU: offload saves nothing)"
    print(f"\n{'variant':>14} {'step s':>8} {'peak MiB':>9} {'vs ZeRO-0':>9}   [{args.backbone}, batch 16, {what}]")
    for r in rows:
        print(f"{r['variant']:>14} {r['step_s']:>8.3f} {r['peak_mb']:>9.0f} {r['peak_mb'] / base['peak_mb']:>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
