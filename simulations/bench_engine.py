"""Benchmark: peak memory and step time of the training engines on one model and batch.

    python -m simulations.bench_engine [--backbone all-MiniLM-L6-v2] [--steps 6] [--set KEY=VALUE ...]

Each variant runs in a fresh process (so peaks do not mix): the plain torch engine, then
DeepSpeed ZeRO-0, ZeRO-2, ZeRO-2 with optimizer offload, ZeRO-3, ZeRO-3 with parameter
and optimizer offload, and the torch engine on an 8-bit and a 4-bit (NF4) frozen backbone.
Reported: median step time after one warm-up step, and peak memory (on CUDA
``torch.cuda.max_memory_allocated``; on CPU the process's peak RSS during the steps, its
high-water mark reset once the model and batch are loaded, and that peak above the loaded
baseline; offload cannot save anything on CPU, "device" and "CPU" memory being the same RAM).

``--rounds N`` instead measures memory across federated rounds: one process per variant plays
N local rounds of one client (``ClientTask.train``, which builds and destroys an engine each
round, as a simulation actor does) and prints the resident memory after each round.

``--world-size N`` (DeepSpeed variants only; ZeRO-0, 2 and 3 unless ``--variants`` says
otherwise) trains on N ranks of one process group (fedgate.federated.ranks.run_job), each
taking 16 / N rows of the batch, and prints per rank: the parameter memory it holds after
DeepSpeed's initialisation (ZeRO-3 keeps 1/N of every partitioned weight), its peak over the
whole run (ZeRO-3 without ``zero.Init`` still loads the whole model first) and its peak
during the steps (on CUDA ``max_memory_allocated``).
"""

from __future__ import annotations

import argparse
import json
import os
import gc
import subprocess
import sys
import time

from fedgate.memory import peak_mib, reset_peak, resident_mib

VARIANTS = {
    "torch": {"engine.name": "torch"},
    "zero0": {"engine.name": "deepspeed", "engine.zero-stage": 0},
    "zero2": {"engine.name": "deepspeed", "engine.zero-stage": 2},
    "zero2+offload": {"engine.name": "deepspeed", "engine.zero-stage": 2, "engine.offload-optimizer": True},
    "zero3": {"engine.name": "deepspeed", "engine.zero-stage": 3},
    "zero3+offload": {"engine.name": "deepspeed", "engine.zero-stage": 3, "engine.offload-optimizer": True,
                      "engine.offload-params": True},
    # the frozen backbone through bitsandbytes (model.quantize), adapters in float32
    "torch-8bit": {"engine.name": "torch", "model.quantize": "8bit"},
    "torch-4bit": {"engine.name": "torch", "model.quantize": "4bit"},
}


def timed_steps(model, stepper, batch: dict, cfg, device, steps: int) -> tuple[list[float], float]:
    """``steps + 1`` training steps on one batch, the forward under ``train.bf16`` autocast as
    fit() runs it; the seconds of each step (the first is the warm-up) and the last loss."""
    import torch

    from fedgate.losses import total_loss
    from fedgate.model import head_targets
    from fedgate.devices import autocast

    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        with autocast(device, cfg.train.bf16):
            pred = stepper.forward(model, batch, None)
        loss, _ = total_loss(pred.float(), head_targets(batch["labels"], cfg.data.misaligned_threshold), model,
                             cfg.loss)
        stepper.backward(loss)
        stepper.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times, float(loss.detach())


def run_one(variant: str, backbone: str, steps: int, extra: dict) -> dict:
    """Train ``steps`` steps on one repeated batch with one engine variant (this process)."""
    import numpy as np
    import torch

    from fedgate.batching import encode_split, make_batch
    from fedgate.config import FedgateConfig
    from fedgate.data import build_embedded_dataset
    from fedgate.engine import close_stepper, make_stepper
    from fedgate.model import build_reward_model

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
    gc.collect()
    base = reset_peak()
    stepper = make_stepper(model, cfg)
    times, loss = timed_steps(model, stepper, batch, cfg, device, steps)
    if device.type == "cuda":
        peak, base = torch.cuda.max_memory_allocated() / 2**20, 0.0
    else:
        peak = peak_mib()
    close_stepper(stepper)
    return {"variant": variant, "step_s": float(np.median(times[1:])), "peak_mb": peak, "above_mb": peak - base,
            "device": device.type, "loss": loss}


def run_rounds(variant: str, backbone: str, rounds: int, extra: dict) -> dict:
    """One client's local rounds in this process, as a simulation actor plays them; the
    resident memory after each round (garbage collected) and the peak so far."""
    import numpy as np

    from fedgate.config import FedgateConfig
    from fedgate.federated.client import ClientTask
    from fedgate.model import build_reward_model
    from fedgate.state import adapter_state, to_numpy

    cfg = FedgateConfig.from_flat({"model.backbone": backbone, "data.limit": 240, "train.batch-size": 16,
                                   "train.epochs": 1, **extra, **VARIANTS[variant]})
    model, _ = build_reward_model(cfg.model, cfg.adapter)
    global_state = to_numpy(adapter_state(model))
    del model
    rss, peak = [], []
    for r in range(1, rounds + 1):
        update = ClientTask(cfg, 0, 2).train(global_state, r)
        global_state = {k: v + update.delta[k] for k, v in global_state.items()}
        del update
        gc.collect()
        rss.append(resident_mib())
        peak.append(peak_mib())
    if not all(np.isfinite(v).all() for v in global_state.values()):
        raise RuntimeError(f"{variant}: the adapters went non-finite")
    return {"variant": variant, "rss_mb": rss, "peak_mb": peak}


def rank_steps(job_dir, job: dict, rank: int) -> dict:
    """One rank of ``--world-size``: train ``job["steps"]`` steps on this rank's rows of one
    batch and measure its memory (called by fedgate.federated.ranks on every rank)."""
    import numpy as np
    import torch
    import torch.distributed as dist

    from fedgate.batching import encode_split, make_batch
    from fedgate.config import FedgateConfig
    from fedgate.data import build_embedded_dataset
    from fedgate.engine import close_stepper, make_stepper
    from fedgate.model import build_reward_model
    from fedgate.devices import pick_device

    world = dist.get_world_size()
    cfg = FedgateConfig.from_flat({"model.backbone": job["backbone"], "train.batch-size": 16, "model.top-layers": 0,
                                   "train.cache-lower-layers": False, **job["extra"], **VARIANTS[job["variant"]],
                                   "engine.world-size": world})
    device = pick_device()  # the LOCAL_RANK-th GPU, or the CPU
    torch.manual_seed(0)
    model, tok = build_reward_model(cfg.model, cfg.adapter)
    model.to(device)
    split = encode_split(build_embedded_dataset(0)["train"].select(range(cfg.train.batch_size)), tok, cfg.model)
    batch = make_batch(split, np.arange(cfg.train.batch_size)[rank::world], tok.pad_token_id, device)
    stepper = make_stepper(model, cfg)
    held = sum((p.ds_tensor if hasattr(p, "ds_tensor") else p).numel() * p.element_size()
               for p in model.parameters()) / 2**20
    overall_before_steps = peak_mib()
    if device.type == "cuda":
        init_cuda = torch.cuda.max_memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    gc.collect()
    base = reset_peak()
    times, _ = timed_steps(model, stepper, batch, cfg, device, job["steps"])
    out = {"rank": rank, "step_s": float(np.median(times[1:])), "params_held_mb": held,
           "peak_overall_mb": max(overall_before_steps, peak_mib()), "peak_steps_mb": peak_mib(),
           "steps_above_mb": peak_mib() - base, "device": device.type}
    if device.type == "cuda":
        out.update(cuda_init_mb=init_cuda, cuda_steps_mb=torch.cuda.max_memory_allocated() / 2**20)
    close_stepper(stepper)
    return out


def _report_ranks(args, variants: list[str]) -> int:
    """Per-rank memory of the DeepSpeed variants on ``args.world_size`` ranks."""
    import torch

    from fedgate.federated.ranks import run_job

    if bad := [v for v in variants if VARIANTS[v].get("engine.name") != "deepspeed"]:
        print(f"--world-size needs DeepSpeed variants; {bad} are not", file=sys.stderr)
        return 2
    rows = {}
    for variant in variants:
        payload = {"backbone": args.backbone, "steps": args.steps, "extra": dict(kv.split("=", 1) for kv in args.set),
                   "variant": variant}
        rows[variant] = run_job("simulations.bench_engine:rank_steps", payload, args.world_size, timeout_s=1800,
                                cuda=torch.cuda.is_available())
        print(f"{variant:>14}: " + "; ".join(f"rank {r['rank']} params {r['params_held_mb']:.0f} MiB, peak "
                                              f"{r['peak_overall_mb']:.0f} MiB" for r in rows[variant]), flush=True)
    cuda = next(iter(rows.values()))[0]["device"] == "cuda"
    base = rows.get("zero0")
    print(f"\n[{args.backbone}, batch 16 over {args.world_size} ranks, per rank; "
          f"{'GPU max_memory_allocated' if cuda else 'CPU RSS'}; MiB]")
    print(f"{'variant':>14} {'rank':>4} {'step s':>7} {'params':>8} {'vs zero0':>8} {'peak all':>9} {'peak steps':>10}"
          + (f" {'GPU init':>9} {'GPU steps':>9}" if cuda else ""))
    for variant, ranks in rows.items():
        for r in ranks:
            ratio = r["params_held_mb"] / base[r["rank"]]["params_held_mb"] if base else float("nan")
            print(f"{variant:>14} {r['rank']:>4} {r['step_s']:>7.3f} {r['params_held_mb']:>8.0f} {ratio:>8.2f} "
                  f"{r['peak_overall_mb']:>9.0f} {r['peak_steps_mb']:>10.0f}"
                  + (f" {r['cuda_init_mb']:>9.0f} {r['cuda_steps_mb']:>9.0f}" if cuda else ""))
    return 0


def _child(args, *flags: str) -> dict:
    cmd = [sys.executable, "-m", "simulations.bench_engine", "--backbone", args.backbone, *flags,
           *(f"--set={kv}" for kv in args.set)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(flags)}: failed\n{done.stderr[-1500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="all-MiniLM-L6-v2")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--rounds", type=int, default=0, help="measure memory over this many local rounds instead")
    p.add_argument("--variants", default="", help="comma-separated subset of " + ", ".join(VARIANTS)
                   + " (default: all; zero0, zero2, zero3 with --world-size)")
    p.add_argument("--world-size", type=int, default=1, help="train on this many ranks; per-rank memory")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--one", choices=list(VARIANTS), help=argparse.SUPPRESS)  # internal: one variant, JSON out
    args = p.parse_args(argv)
    extra = dict(kv.split("=", 1) for kv in args.set)
    default = "zero0,zero2,zero3" if args.world_size > 1 else ",".join(VARIANTS)
    variants = [v.strip() for v in (args.variants or default).split(",") if v.strip()]
    if unknown := [v for v in variants if v not in VARIANTS]:
        p.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    if args.one:
        result = (run_rounds(args.one, args.backbone, args.rounds, extra) if args.rounds
                  else run_one(args.one, args.backbone, args.steps, extra))
        print(json.dumps(result))
        return 0
    try:
        if args.world_size > 1:
            return _report_ranks(args, variants)
        if args.rounds:
            return _report_rounds(args, variants)
        return _report_steps(args, variants)
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1


def _report_steps(args, variants: list[str]) -> int:
    rows = []
    for variant in variants:
        rows.append(_child(args, "--one", variant, "--steps", str(args.steps)))
        print(f"{variant:>14}: step {rows[-1]['step_s']:.3f} s, peak {rows[-1]['peak_mb']:.0f} MiB", flush=True)
    base = next((r for r in rows if r["variant"] == "zero0"), rows[0])
    cuda = base["device"] == "cuda"
    what = "GPU max_memory_allocated" if cuda else "CPU peak RSS during the steps; offload saves nothing on CPU"
    print(f"\n[{args.backbone}, batch 16, {what}]")
    print(f"{'variant':>14} {'step s':>8} {'peak MiB':>9} {'above load':>10} {'peak vs ' + base['variant']:>13}")
    for r in rows:
        print(f"{r['variant']:>14} {r['step_s']:>8.3f} {r['peak_mb']:>9.0f} {r['above_mb']:>10.0f} "
              f"{r['peak_mb'] / base['peak_mb']:>13.2f}")
    return 0


def _report_rounds(args, variants: list[str]) -> int:
    rows = []
    for variant in variants:
        rows.append(_child(args, "--one", variant, "--rounds", str(args.rounds)))
        r = rows[-1]
        print(f"{variant:>14}: RSS after each round {', '.join(f'{m:.0f}' for m in r['rss_mb'])} MiB", flush=True)
    print(f"\n[{args.backbone}, one client, {args.rounds} local rounds; MiB]")
    print(f"{'variant':>14} {'RSS r1':>8} {'RSS r2':>8} {'RSS last':>9} {'r2->last':>9} {'peak r2':>8} {'peak last':>9}")
    for r in rows:
        rss, peak = r["rss_mb"], r["peak_mb"]
        second = 1 if len(rss) > 1 else 0
        print(f"{r['variant']:>14} {rss[0]:>8.0f} {rss[second]:>8.0f} {rss[-1]:>9.0f} {rss[-1] - rss[second]:>+9.1f} "
              f"{peak[second]:>8.0f} {peak[-1]:>9.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
