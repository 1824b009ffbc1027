"""Benchmark: what Flower costs on top of the clients' own work, and what goes up the wire.

    python -m simulations.bench_federation [--num-supernodes 4] [--run-config '...']

Runs one simulation with one client at a time (``--cpus-per-client`` = all cores, so client
compute is not shared between clients) and compares, per round, the wall time of the train
and federated-evaluation phases with the compute the clients measured themselves (model
setup and caching when a process first sees a client, local training, local evaluation).
Overhead = phase wall time / client compute - 1; goal <= 15%. It also prints the uplink
bytes per client and round as a share of the backbone's bytes; goal <= 1%.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from fedgate.rundir import RunDir
from fedgate.launch.simulation import simulate

log = logging.getLogger("fedgate.bench")


def round_rows(rounds: list[dict]) -> list[dict]:
    rows = []
    for r in rounds:
        if r["round"] == 0:
            continue
        train_compute = sum(c.get("train-s", 0.0) + c.get("setup-s", 0.0) for c in r["clients"])
        eval_compute = sum(c.get("eval-s", 0.0) + c.get("setup-s", 0.0) for c in r.get("eval_clients", []))
        rows.append({
            "round": r["round"],
            "train_wall": r["wall_s"]["train"], "train_compute": train_compute,
            "eval_wall": r["wall_s"]["federated_eval"], "eval_compute": eval_compute,
            "server_eval": r["wall_s"]["server_eval"],
            "up_share": r["bytes"]["up_per_client_over_backbone"],
            "up_kib": r["bytes"]["array_up_per_client"] / 1024,
        })
    return rows


def report(rows: list[dict], backbone_bytes: int) -> str:
    lines = [f"{'round':>5} {'train wall s':>12} {'client compute s':>16} {'overhead':>9} "
             f"{'fed-eval wall s':>15} {'client compute s':>16} {'overhead':>9} {'up KiB/client':>13} {'up/backbone':>11}"]
    for r in rows:
        lines.append(f"{r['round']:>5} {r['train_wall']:>12.1f} {r['train_compute']:>16.1f} "
                     f"{r['train_wall'] / r['train_compute'] - 1:>9.1%} {r['eval_wall']:>15.1f} "
                     f"{r['eval_compute']:>16.1f} {r['eval_wall'] / max(r['eval_compute'], 1e-9) - 1:>9.1%} "
                     f"{r['up_kib']:>13.1f} {r['up_share']:>11.3%}")
    steady = rows[1:] or rows
    wall = sum(r["train_wall"] + r["eval_wall"] for r in steady)
    compute = sum(r["train_compute"] + r["eval_compute"] for r in steady)
    lines.append(f"rounds {steady[0]['round']}-{steady[-1]['round']} (after actor start-up): client phases "
                 f"{wall:.1f} s wall vs {compute:.1f} s client compute -> overhead {wall / compute - 1:.1%} (goal <= 15%)")
    first = rows[0]
    lines.append(f"round 1 (includes starting the Ray actors): train phase overhead "
                 f"{first['train_wall'] / first['train_compute'] - 1:.1%}")
    lines.append(f"uplink per client-round: {rows[-1]['up_kib']:.1f} KiB = {rows[-1]['up_share']:.3%} of the "
                 f"backbone's {backbone_bytes / 2**20:.1f} MiB (goal <= 1%)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-supernodes", type=int, default=4)
    p.add_argument("--cpus-per-client", type=float, default=float(os.cpu_count() or 1))
    p.add_argument("--run-config", action="append", default=[])
    p.add_argument("--out", default="runs/bench-federation")
    args = p.parse_args(argv)
    code, run_dir = simulate(args.run_config, num_supernodes=args.num_supernodes,
                             cpus_per_client=args.cpus_per_client, out=args.out)
    if code != 0:
        return code
    rounds = RunDir(run_dir).rounds()
    print(report(round_rows(rounds), rounds[0]["params"]["backbone_bytes"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
