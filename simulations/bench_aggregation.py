"""Benchmark: server-side aggregation time per strategy as the number of clients grows.

    python -m simulations.bench_aggregation [--clients 4,16,64,100] [--strategies fedavg,exact,...]
    python -m simulations.bench_aggregation --set model.backbone="tiny-bert" --out DIR

The global state is the real trainable state of the configured model (default: MiniLM,
gated LoRA r 8 on the top 2 blocks); each client's update is a seeded random delta of that
layout, over the tensors the strategy's clients send. Times one ``Strategy.aggregate`` call (fedgate/strategies/), the whole of what the
server computes per round besides (de)serialization: median of ``--repeats`` calls after one
warm-up. Prints a table (ms) and writes ``aggregation.csv`` / ``aggregation.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from fedgate.aggregation import ClientUpdate
from fedgate import strategies
from fedgate.aggregation.lora import RESIDUAL
from fedgate.config import FedgateConfig
from fedgate.federated.client_rules import shared_keys
from simulations.results import write_table
from simulations.study import parse_sets

STRATEGIES = ("fedavg", "fedavg-ab", "fedadam", "exact", "hetlora", "ffa", "fedsa", "rolora", "fedex-lora", "flora",
              "lora-fair", "median", "trimmed-mean", "krum")


def global_state(cfg: FedgateConfig) -> dict[str, np.ndarray]:
    from fedgate.model import build_reward_model
    from fedgate.state import adapter_state, to_numpy

    model, _ = build_reward_model(cfg.model, cfg.adapter)
    return to_numpy(adapter_state(model))


def updates_for(state: dict[str, np.ndarray], clients: int, seed: int = 0) -> list[ClientUpdate]:
    rng = np.random.default_rng(seed)
    return [ClientUpdate(node_id=i + 1, num_examples=int(rng.integers(50, 200)),
                         delta={k: (0.01 * rng.standard_normal(v.shape)).astype(v.dtype) for k, v in state.items()})
            for i in range(clients)]


def time_strategy(flat: dict, state: dict[str, np.ndarray], updates: list[ClientUpdate], repeats: int) -> float:
    """Median milliseconds of one aggregate call."""
    cfg = strategies.check(FedgateConfig.from_flat(flat))
    rule = strategies.create(cfg.federation)
    # what a round-1 client of this rule sends (ffa: no A, fedsa: no B, rolora: B alone; never a dense term)
    shared = shared_keys(state, cfg, server_round=1)
    state = {k: state[k] for k in shared}
    back = [k for k in shared if not k.endswith(RESIDUAL)]
    updates = [dataclasses.replace(u, delta={k: u.delta[k] for k in back}) for u in updates]
    optimizer = rule.optimizer()
    opt_state = optimizer.init(state)
    sent = [state] * len(updates)
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        rule.aggregate(state, updates, optimizer, opt_state, strategies.RoundInputs(
            sent=sent, rank=cfg.adapter.r, scaling=cfg.adapter.scaling, server_round=1))
        if i:  # the first call warms caches and allocators
            times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", default="4,16,64,100")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    overrides = parse_sets(args.set)
    base = FedgateConfig.from_flat(overrides)
    state = global_state(base)
    n_params = sum(v.size for v in state.values())
    print(f"global state: {len(state)} tensors, {n_params:,} parameters ({base.model.backbone}, r {base.adapter.r})")
    counts = [int(c) for c in args.clients.split(",")]
    rows = []
    dense_state = None  # fedex-lora and flora: the same state plus each adapter's dense term
    for strategy in [s.strip() for s in args.strategies.split(",") if s.strip()]:
        row = {"strategy": strategy}
        flat = {**overrides, "federation.strategy": strategy,
                "adapter.dense-residual": strategies.get(strategy).dense_residual}
        if flat["adapter.dense-residual"] and dense_state is None:
            dense_state = global_state(FedgateConfig.from_flat(flat))
        here = dense_state if flat["adapter.dense-residual"] else state
        for k in counts:
            row[f"{k} clients"] = time_strategy(flat, here, updates_for(here, k), args.repeats)
        rows.append(row)
        print(" | ".join(f"{v:.1f}" if isinstance(v, float) else v for v in row.values()), flush=True)
    columns = {"strategy": "strategy (ms per round)", **{f"{k} clients": f"{k} clients" for k in counts}}
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        print(write_table(out, rows, columns, name="aggregation"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
