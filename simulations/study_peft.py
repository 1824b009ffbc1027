"""PEFT baselines under the same federation: gated LoRA next to plain LoRA, a bottleneck
adapter (Houlsby), IA3 (through peft) and BitFit, each trained only in the top two blocks,
on one non-IID split and seed. Accuracy against trainable-parameter percent, as the PEFT
papers' comparison tables have it.

    python -m simulations.study_peft [--variants ...] [--set KEY=VALUE] [--out DIR]
    python -m simulations.report DIR                                   # tables and plots again, no runs

Same federation as the gate study (``simulations.study_gates``), so its ``plain-lora`` and
``both-gates`` runs are this study's two LoRA rows. Writes ``results.csv`` / ``results.md``
(baseline: plain LoRA), ``final_auc.png``, ``auc_per_round.png``, ``auc_vs_params.png``,
``variants.json`` and one run directory per variant.
"""

from __future__ import annotations

import sys
from pathlib import Path

from simulations.results import rows_from_dir, standard_results
from simulations.study import study_main
from simulations.study_gates import COMMON

VARIANTS = {
    "plain-lora": {"adapter.token-gate": False, "adapter.structural-gate": False},
    "gated-lora": {"adapter.token-gate": True, "adapter.structural-gate": True},
    "bottleneck": {"adapter.method": "bottleneck"},  # width adapter.r = 8
    "ia3": {"adapter.method": "ia3"},
    "bitfit": {"adapter.method": "bitfit"},
}


def report(out: Path) -> str:
    from fedgate.federated.report import scatter_plot

    rows = rows_from_dir(out)
    scatter_plot(out / "auc_vs_params.png", {n: (r["trainable_percent"], r["auc"]) for n, r in rows.items()},
                 xlabel="trainable parameters (% of the backbone, head included)",
                 ylabel="final server test ROC-AUC", title="PEFT methods, same federation")
    return standard_results(out, rows, baseline="plain-lora", title="PEFT baselines")


def main(argv: list[str] | None = None) -> int:
    return study_main(argv, doc=__doc__, module=__spec__.name, variants=VARIANTS, common=COMMON,
                      default_out="runs/study-peft", report=report)


if __name__ == "__main__":
    sys.exit(main())
