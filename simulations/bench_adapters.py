"""Train-step time of fedgate's gated LoRA vs plain peft LoRA, side by side in one run.

Same backbone, batch, sequence length, rank and targets; the three variants' steps are
interleaved (round-robin) so machine noise hits all of them alike. Prints the median step
time of each, the ratio to peft, and the trainable-parameter percentage.

    python -m simulations.bench_adapters                       # MiniLM, batch 16 x 128, r 8
    python -m simulations.bench_adapters --backbone tiny-bert --steps 5
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from contextlib import nullcontext

import torch


def _peft_variant(backbone, rank: int, alpha: float, targets: list[str]):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(copy.deepcopy(backbone), LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0,
                                                                target_modules=targets))
    return model


def _fedgate_variant(backbone, rank: int, alpha: float, targets: list[str], gates: bool):
    from fedgate.adapters import AdapterSpec
    from fedgate.inject import freeze_except, inject_adapters

    model = copy.deepcopy(backbone)
    spec = AdapterSpec(r=rank, alpha=alpha, token_gate=gates, structural_gate=gates)
    inject_adapters(model, spec, targets)
    freeze_except(model)
    with torch.no_grad():  # non-zero B (the work per step does not depend on the values)
        for n, p in model.named_parameters():
            if n.endswith("lora_B"):
                p.normal_(0, 0.01)
    return model


def _make_step(model, batch, bf16: bool):
    from fedgate.inject import reset_gate_records

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else nullcontext

    def step() -> float:
        t0 = time.perf_counter()
        reset_gate_records(model)  # no-op for peft; fedgate adapters start a fresh gate record
        with ctx():
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        loss = out.float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    return step


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="all-MiniLM-L6-v2")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--targets", default="", help="comma-separated; default: the family's q/v")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--bf16", action="store_true")
    args = ap.parse_args(argv)

    from fedgate.inject import default_targets
    from fedgate.model import load_backbone

    backbone, _ = load_backbone(args.backbone)
    targets = args.targets.split(",") if args.targets else list(default_targets(backbone.config.model_type))
    torch.manual_seed(0)
    vocab = backbone.config.vocab_size
    batch = {"input_ids": torch.randint(1000, min(vocab, 20000), (args.batch, args.seq)),
             "attention_mask": torch.ones(args.batch, args.seq, dtype=torch.long)}
    variants = {
        "peft LoRA": _peft_variant(backbone, args.rank, 2.0 * args.rank, targets),
        "fedgate LoRA (gates off)": _fedgate_variant(backbone, args.rank, 2.0 * args.rank, targets, gates=False),
        "fedgate gated LoRA": _fedgate_variant(backbone, args.rank, 2.0 * args.rank, targets, gates=True),
    }
    steps = {name: _make_step(m.train(), batch, args.bf16) for name, m in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(args.warmup + args.steps):
        for name, step in steps.items():
            t = step()
            if i >= args.warmup:
                times[name].append(t)

    backbone_params = sum(p.numel() for p in backbone.parameters())
    print(f"backbone {args.backbone} ({backbone_params / 1e6:.1f}M params), batch {args.batch} x {args.seq}, "
          f"rank {args.rank}, targets {targets}, bf16={args.bf16}, threads={torch.get_num_threads()}, "
          f"{args.steps} timed steps each (interleaved)")
    ref = statistics.median(times["peft LoRA"])
    print(f"{'variant':28s} {'median step (s)':>16s} {'vs peft':>8s} {'trainable':>10s} {'% backbone':>11s}")
    for name, m in variants.items():
        med = statistics.median(times[name])
        trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
        pct = 100.0 * trainable / backbone_params
        print(f"{name:28s} {med:16.4f} {med / ref:7.3f}x {trainable:10,d} {pct:10.3f}%")
    gated = statistics.median(times["fedgate gated LoRA"]) / ref
    print(f"goal gated <= 1.10x peft: {'met' if gated <= 1.10 else 'MISSED'} ({gated:.3f}x)")


if __name__ == "__main__":
    main()
