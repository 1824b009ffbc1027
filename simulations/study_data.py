"""Training-sample reduction and label sparsity: fewer training rows in the federation, and
a federation where only a share of each client's rows carry labels (the rest are left out:
fedgate has no unsupervised objective).

    python -m simulations.study_data [--variants ...] [--set KEY=VALUE] [--out DIR]
    python -m simulations.report DIR

Writes ``results.csv`` / ``results.md`` (baseline: the default 3,200 rows, all labelled), ``final_auc.png``,
``auc_per_round.png``, ``variants.json`` and one run directory per variant.
"""

from __future__ import annotations

import sys
from pathlib import Path

from simulations.results import rows_from_dir, standard_results
from simulations.study import study_main

COMMON = {"shards.partitioner": "dirichlet", "shards.alpha": 0.5,  # rounds and sizing: the defaults
          "server.noise-rates": "", "server.report": False,
          "federation.fraction-evaluate": 0.0, "server.baselines": False}
VARIANTS = {
    "rows-3200": {"data.limit": 3200},
    "rows-1600": {"data.limit": 1600},
    "rows-800": {"data.limit": 800},
    "labelled-50pct": {"data.limit": 3200, "shards.labeled-fraction": 0.5},
    "labelled-25pct": {"data.limit": 3200, "shards.labeled-fraction": 0.25},
}


def report(out: Path) -> str:
    return standard_results(out, rows_from_dir(out), baseline="rows-3200", title="training rows and labels")


def main(argv: list[str] | None = None) -> int:
    return study_main(argv, doc=__doc__, module=__spec__.name, variants=VARIANTS, common=COMMON,
                      default_out="runs/study-data", report=report)


if __name__ == "__main__":
    sys.exit(main())
