"""Batch size and compute/memory budget: local batch size, local epochs per round, and the
training engine (plain torch vs DeepSpeed ZeRO-2 / ZeRO-3), on one split and seed.

    python -m simulations.study_budget [--variants ...] [--set KEY=VALUE] [--out DIR]
    python -m simulations.report DIR

Each variant changes one thing from the defaults (batch 32, 0.75 local epochs per round,
plain torch), over 2 rounds to keep the study short.

Writes ``results.csv`` / ``results.md`` (baseline: the defaults on torch; with each
run's peak client memory), ``final_auc.png``, ``auc_per_round.png``, ``variants.json`` and
one run directory per variant. On CPU, ZeRO shows its cost, not its savings (README).
"""

from __future__ import annotations

import sys
from pathlib import Path

from fedgate.rundir import RunDir
from simulations.results import rows_from_dir, standard_results, summarize_run
from simulations.study import study_main

COMMON = {"shards.partitioner": "dirichlet", "shards.alpha": 0.5, "federation.rounds": 2,
          "server.noise-rates": "", "server.report": False,
          "federation.fraction-evaluate": 0.0, "server.baselines": False}
BASELINE = "defaults-torch"  # batch 32, 0.75 epochs, plain torch
VARIANTS = {
    BASELINE: {},
    "batch16": {"train.batch-size": 16},
    "batch64": {"train.batch-size": 64},
    "epochs-half": {"train.epochs": 0.375},
    "epochs-double": {"train.epochs": 1.5},
    "zero2": {"engine.name": "deepspeed", "engine.zero-stage": 2},
    "zero3": {"engine.name": "deepspeed", "engine.zero-stage": 3},
}
EXTRA = {"local_steps": "local steps (all clients, all rounds)", "client_peak_mib": "peak client RSS MiB"}


def summarize(run_dir: Path) -> dict:
    row = summarize_run(run_dir)
    clients = [c for r in RunDir(run_dir).rounds() if r["round"] > 0 for c in r.get("clients", [])]
    row["local_steps"] = int(sum(c.get("steps", 0) for c in clients))
    row["client_peak_mib"] = f"{max((c.get('rss-peak-mb', 0) for c in clients), default=0):.0f}"
    return row


def report(out: Path) -> str:
    return standard_results(out, rows_from_dir(out, summarize), baseline=BASELINE,
                            title="batch size and budget", extra=EXTRA)


def main(argv: list[str] | None = None) -> int:
    return study_main(argv, doc=__doc__, module=__spec__.name, variants=VARIANTS, common=COMMON,
                      default_out="runs/study-budget", report=report)


if __name__ == "__main__":
    sys.exit(main())
