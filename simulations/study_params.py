"""Trainable-parameter ratio: adapter rank and the number of insertion points (top blocks
that get adapters) against ROC-AUC, F1, trainable share of the backbone and uplink bytes.

    python -m simulations.study_params [--variants ...] [--set KEY=VALUE] [--out DIR]
    python -m simulations.report DIR

Writes ``results.csv`` / ``results.md``, ``final_auc.png``, ``auc_per_round.png``,
``variants.json`` and one run directory per variant (baseline: r 8 on the top 2 blocks, the
project default).
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
    "r2-top2": {"adapter.r": 2, "adapter.alpha": 4.0, "model.top-layers": 2},
    "r4-top2": {"adapter.r": 4, "adapter.alpha": 8.0, "model.top-layers": 2},
    "r8-top2": {"adapter.r": 8, "adapter.alpha": 16.0, "model.top-layers": 2},
    "r16-top2": {"adapter.r": 16, "adapter.alpha": 32.0, "model.top-layers": 2},
    "r8-top1": {"adapter.r": 8, "adapter.alpha": 16.0, "model.top-layers": 1},
    "r8-top4": {"adapter.r": 8, "adapter.alpha": 16.0, "model.top-layers": 4},
}


def report(out: Path) -> str:
    return standard_results(out, rows_from_dir(out), baseline="r8-top2", title="rank and insertion points")


def main(argv: list[str] | None = None) -> int:
    return study_main(argv, doc=__doc__, module=__spec__.name, variants=VARIANTS, common=COMMON,
                      default_out="runs/study-params", report=report)


if __name__ == "__main__":
    sys.exit(main())
