"""Number of clients and participation: the same 1600 training rows split over 2 to 100
clients, all of them or a sampled share training each round (100 clients with 10% sampled
per round included).

    python -m simulations.study_scale [--variants ...] [--set KEY=VALUE] [--out DIR]
    python -m simulations.report DIR

Shards are IID here so that every client of 100 gets rows; the other studies cover skew.
Writes ``results.csv`` / ``results.md`` (baseline: 4 clients, all training), with the
clients per round and the mean round time, ``final_auc.png``, ``auc_per_round.png``,
``variants.json`` and one run directory per variant.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fedgate.rundir import RunDir
from simulations.results import rows_from_dir, standard_results, summarize_run
from simulations.study import NUM_SUPERNODES, study_main

COMMON = {"shards.partitioner": "iid", "federation.rounds": 3, "data.limit": 1600,
          "server.noise-rates": "", "server.report": False, "federation.fraction-evaluate": 0.0,
          "federation.min-train-nodes": 1, "federation.min-available-nodes": 1, "server.baselines": False}
VARIANTS = {
    "2-clients": {NUM_SUPERNODES: 2, "federation.fraction-train": 1.0},
    "4-clients": {NUM_SUPERNODES: 4, "federation.fraction-train": 1.0},
    "8-clients": {NUM_SUPERNODES: 8, "federation.fraction-train": 1.0},
    "20-clients-25pct": {NUM_SUPERNODES: 20, "federation.fraction-train": 0.25},
    "100-clients-10pct": {NUM_SUPERNODES: 100, "federation.fraction-train": 0.1},
}
EXTRA = {"clients_per_round": "clients per round", "round_s": "mean round s"}


def summarize(run_dir: Path) -> dict:
    row = summarize_run(run_dir)
    trained = [r for r in RunDir(run_dir).rounds() if r["round"] > 0]
    row["clients_per_round"] = f"{sum(len(r['clients']) for r in trained) / max(1, len(trained)):.1f}"
    row["round_s"] = f"{sum(r['wall_s']['round'] for r in trained) / max(1, len(trained)):.0f}"
    return row


def report(out: Path) -> str:
    return standard_results(out, rows_from_dir(out, summarize), baseline="4-clients", title="clients and participation",
                            extra=EXTRA)


def main(argv: list[str] | None = None) -> int:
    return study_main(argv, doc=__doc__, module=__spec__.name, variants=VARIANTS, common=COMMON,
                      default_out="runs/study-scale", report=report)


if __name__ == "__main__":
    sys.exit(main())
