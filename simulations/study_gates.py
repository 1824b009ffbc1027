"""Gate ablation: which gates earn their keep? Plain LoRA, the token gate alone, the
structural gate alone, both, and both without the KL pull towards the federation's gate
profile, on one non-IID split and seed.

    python -m simulations.study_gates [--variants ...] [--set KEY=VALUE] [--out DIR]
    fedgate report DIR                                   # tables and plots again, no runs

Writes ``results.csv`` / ``results.md`` (final ROC-AUC and its difference to plain LoRA,
F1, AUC under 10% input noise, trainable share, uplink), ``final_auc.png``,
``auc_per_round.png``, ``variants.json`` and one run directory per variant.
"""

from __future__ import annotations

import sys
from pathlib import Path

from simulations.study import rows_from_dir, standard_results, study_main

COMMON = {"federation.partitioner": "dirichlet", "federation.alpha": 0.5,  # rounds and sizing: the defaults
          "server.noise-rates": "0.1", "server.report": False,
          "federation.fraction-evaluate": 0.0, "server.baselines": False}
VARIANTS = {
    "plain-lora": {"adapter.token-gate": False, "adapter.structural-gate": False},
    "token-gate": {"adapter.token-gate": True, "adapter.structural-gate": False},
    "structural-gate": {"adapter.token-gate": False, "adapter.structural-gate": True},
    "both-gates": {"adapter.token-gate": True, "adapter.structural-gate": True},
    "both-no-kl-prior": {"adapter.token-gate": True, "adapter.structural-gate": True, "loss.beta": 0.0},
}


def report(out: Path) -> str:
    return standard_results(out, rows_from_dir(out), baseline="plain-lora", title="gate ablation")


def main(argv: list[str] | None = None) -> int:
    return study_main(argv, doc=__doc__, module=__spec__.name, variants=VARIANTS, common=COMMON,
                      default_out="runs/study-gates", report=report)


if __name__ == "__main__":
    sys.exit(main())
