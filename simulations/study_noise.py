"""Semantic noise and conflicting feedback: how much of the global model's ROC-AUC survives
noisy evaluation inputs (5-20% of words perturbed), and flipped training labels (a share of
every client's rows, or whole clients), with plain averaging and with a robust rule.

    python -m simulations.study_noise [--variants ...] [--set KEY=VALUE] [--out DIR]
    python -m simulations.report DIR

Every run reports its AUC on clean and on noisy test inputs. Writes ``results.csv`` /
``results.md`` (baseline: fedavg on clean labels), ``final_auc.png``, ``auc_per_round.png``,
``variants.json`` and one run directory per variant. ``simulations.adversarial`` compares
more rules against flipped clients.
"""

from __future__ import annotations

import sys
from pathlib import Path

from simulations.results import rows_from_dir, standard_results
from simulations.study import study_main

COMMON = {"shards.partitioner": "dirichlet", "shards.alpha": 0.5,  # rounds and sizing: the defaults
          "server.noise-rates": "0.05,0.1,0.2", "server.report": False,
          "federation.fraction-evaluate": 0.0, "server.baselines": False}
VARIANTS = {
    "fedavg-clean": {"federation.strategy": "fedavg"},
    "fedavg-rows-10pct": {"federation.strategy": "fedavg", "shards.flipped-rows": 0.1},
    "fedavg-rows-30pct": {"federation.strategy": "fedavg", "shards.flipped-rows": 0.3},
    "median-clean": {"federation.strategy": "median"},
    "median-rows-10pct": {"federation.strategy": "median", "shards.flipped-rows": 0.1},
    "median-rows-30pct": {"federation.strategy": "median", "shards.flipped-rows": 0.3},
    "fedavg-clients-25pct": {"federation.strategy": "fedavg", "shards.flipped-clients": 0.25},
    "median-clients-25pct": {"federation.strategy": "median", "shards.flipped-clients": 0.25},
}


def report(out: Path) -> str:
    return standard_results(out, rows_from_dir(out), baseline="fedavg-clean", title="noise and conflicting feedback")


def main(argv: list[str] | None = None) -> int:
    return study_main(argv, doc=__doc__, module=__spec__.name, variants=VARIANTS, common=COMMON,
                      default_out="runs/study-noise", report=report)


if __name__ == "__main__":
    sys.exit(main())
