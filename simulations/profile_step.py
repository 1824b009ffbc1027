"""Where a training step's time goes, on the default model and real embedded rows.

    python -m simulations.profile_step [--steps 20] [--set train.batch-size=32 ...]

Times, per optimizer step (mean over ``--steps`` after 3 warm-up steps): building the padded
batch, the forward pass of the prompts, the forward pass of the responses, the head and
loss, the backward pass and the optimizer step, plus the one-off cost of caching the frozen
lower layers. Also the tokens per batch, so a change of sequence length or batch size can
be read against it. Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fedgate.batching import encode_split, iterate_batches, make_batch, row_lengths
from fedgate.config import FedgateConfig
from fedgate.inject import reset_gate_records
from fedgate.losses import total_loss
from fedgate.model import build_reward_model, head_targets
from fedgate.data.splits import load_splits
from fedgate.devices import autocast
from fedgate.train import TorchStepper, prepare_cache
from simulations.study import parse_sets


def profile(cfg: FedgateConfig, steps: int, rows: int) -> dict[str, float]:
    device = torch.device("cpu")
    torch.manual_seed(0)
    train = load_splits(cfg)["train"].select(range(rows))
    model, tok = build_reward_model(cfg.model, cfg.adapter)
    enc = encode_split(train, tok, cfg.model)
    t0 = time.perf_counter()
    split_at = prepare_cache(model, [enc], cfg, tok.pad_token_id, device, progress=False)
    cache_s = time.perf_counter() - t0
    stepper = TorchStepper(model, cfg)
    batches = iterate_batches(len(enc), cfg.train.batch_size, np.random.default_rng(0), row_lengths(enc))
    sums = dict.fromkeys(("batch", "prompt_forward", "response_forward", "head_and_loss", "backward", "optimizer"), 0.0)
    tokens = 0
    model.train()
    for i, rows_ in enumerate(batches[: steps + 3]):
        t = [time.perf_counter()]
        reset_gate_records(model)  # what RewardModel.forward does first
        batch = make_batch(enc, rows_, tok.pad_token_id, device)
        t.append(time.perf_counter())
        with autocast(device, cfg.train.bf16):  # as fit() runs the forward pass
            p = model.encode(batch, "prompt_", split_at)
            t.append(time.perf_counter())
            r = model.encode(batch, "response_", split_at)
            t.append(time.perf_counter())
            pred = model.head(model.combine(p, r))
            loss, _ = total_loss(pred, head_targets(batch["labels"], cfg.data.misaligned_threshold), model, cfg.loss)
        t.append(time.perf_counter())
        stepper.backward(loss)
        t.append(time.perf_counter())
        stepper.step()
        t.append(time.perf_counter())
        if i >= 3:
            for key, a, b in zip(sums, t, t[1:]):
                sums[key] += b - a
            tokens += int(batch["prompt_attention_mask"].sum() + batch["response_attention_mask"].sum())
    out = {k: v / steps for k, v in sums.items()}
    out["step"] = sum(out.values())
    out["tokens_per_batch"] = tokens / steps
    out["cache_s_per_1000_rows"] = 1000 * cache_s / rows
    out["split_at"] = float(split_at if split_at is not None else -1)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rows", type=int, default=1200, help="training rows to tokenise and cache")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    cfg = FedgateConfig.from_flat(parse_sets(args.set))
    print(f"threads {torch.get_num_threads()}, batch {cfg.train.batch_size}, adapters in the top "
          f"{cfg.model.top_layers} layers, pooling {cfg.model.pooling or 'default'}, "
          f"{'bf16 autocast' if cfg.train.bf16 else 'fp32'}")
    res = profile(cfg, args.steps, args.rows)
    step = res["step"]
    print("| part | ms per step | share |\n|---|---|---|")
    for key in ("batch", "prompt_forward", "response_forward", "head_and_loss", "backward", "optimizer"):
        print(f"| {key} | {1000 * res[key]:.1f} | {100 * res[key] / step:.0f}% |")
    print(f"| **step** | **{1000 * step:.1f}** | |")
    print(f"tokens per batch (prompts + responses, no padding): {res['tokens_per_batch']:.0f}; "
          f"caching layers below {res['split_at']:.0f}: {res['cache_s_per_1000_rows']:.1f} s per 1000 rows (once)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
