"""Compare aggregation strategies on the same non-IID split and seed, one real Flower
simulation each, and write a table and a plot.

    python -m simulations.compare_strategies [--variants fedavg-ab-plain,exact,...] [--set KEY=VALUE ...]
    python -m simulations.compare_strategies --summarize OUT_DIR     # table and plot again, no runs

Every variant shares ``COMMON`` (Dirichlet alpha 0.2 over 4 clients, the offline MiniLM
backbone) plus ``--set`` overrides; each adds its own strategy keys (``VARIANTS``). Written to
``--out``: one run directory per variant, ``results.csv`` and ``results.md`` (final ROC-AUC,
F1, uplink bytes, wall time), ``auc_per_round.png``, and ``variants.json`` (the exact run
config of every variant).
"""

from __future__ import annotations

import sys
from pathlib import Path

from fedgate.federated.report import line_plot
from simulations.bench_learning import PRUNE_THRESHOLD
from simulations.results import (contrast_cells, paired_difference, per_round_table, rows_from_dir, summarize_run,
                                 write_table)
from simulations.study import config_string, study_main

COMMON = {"shards.alpha": 0.2, "shards.partitioner": "dirichlet", "federation.rounds": 4,
          "server.report": False, "server.baselines": False}
PLAIN = {"adapter.token-gate": False, "adapter.structural-gate": False}
VARIANTS: dict[str, dict] = {
    "fedavg-ab-plain": {"federation.strategy": "fedavg-ab", **PLAIN},  # plain LoRA, A and B averaged: the baseline
    "fedavg": {"federation.strategy": "fedavg"},  # gated LoRA from here on
    "exact": {"federation.strategy": "exact"},
    "gate-weighted": {"federation.strategy": "fedavg", "federation.weighting": "gates"},
    "ffa": {"federation.strategy": "ffa"},
    "fedadam": {"federation.strategy": "fedadam"},
    "median": {"federation.strategy": "median"},
    # the learning benchmark's pruning setting: at most half the insertion points, lowest gates first
    "pruning": {"federation.strategy": "fedavg", "federation.prune-threshold": PRUNE_THRESHOLD,
                "federation.prune-patience": 1, "federation.prune-max-share": 0.5},
}
BASELINE = "fedavg-ab-plain"
__all__ = ["BASELINE", "VARIANTS", "run_config", "summarize_run", "write_results"]


def variant_config(variant: str, overrides: dict) -> dict:
    return {**COMMON, **overrides, **VARIANTS[variant]}


def run_config(variant: str, overrides: dict) -> str:
    return config_string(variant_config(variant, overrides))


def write_results(out: Path, rows: dict[str, dict]) -> str:
    """results.csv, results.md, per_round.md and auc_per_round.png; returns the markdown
    table. The difference to the baseline is paired per seed (:func:`paired_difference`)."""
    ref_up = rows.get("fedavg", {}).get("uplink_mib")
    table = []
    for name, r in rows.items():
        t = {"variant": name, "seeds": r.get("seeds", 1), "auc": r["auc"],
             "auc_se": f"{r['auc_se']:.4f}" if r.get("seeds", 1) > 1 else "", "f1": r["f1"],
             "uplink_mib": f"{r['uplink_mib']:.2f}",
             "uplink_vs_fedavg": f"{r['uplink_mib'] / ref_up:.2f}" if ref_up else "",
             "pruned": f"{r['pruned']:g}", "wall_s": f"{r['wall_s']:.0f}"}
        if BASELINE in rows and name != BASELINE:
            diff, se, _ = paired_difference(out, rows, name, BASELINE)
            t.update(zip(("auc_vs_baseline_points", "se", "resolved"), contrast_cells(diff, se)))
        table.append(t)
    md = write_table(out, table, {"variant": "strategy", "seeds": "seeds", "auc": "final ROC-AUC", "auc_se": "its SE",
                                  "auc_vs_baseline_points": "vs plain fedavg-ab (points)",
                                  "se": "SE of the difference", "resolved": "resolved (>= 2 SE)", "f1": "F1",
                                  "uplink_mib": "uplink MiB", "uplink_vs_fedavg": "uplink vs fedavg",
                                  "pruned": "adapters pruned", "wall_s": "wall s"})
    per_round_table(out, rows)
    line_plot(out / "auc_per_round.png",
              {name: (list(range(len(r["auc_per_round"]))), r["auc_per_round"]) for name, r in rows.items()},
              ylabel="server test ROC-AUC", title="ROC-AUC per round per strategy", dashed=[BASELINE], size=(7, 4.5))
    return md


def report(out: Path) -> str:
    """The table and plot again from a finished (or partly finished) comparison."""
    return write_results(out, rows_from_dir(out))


def main(argv: list[str] | None = None) -> int:
    return study_main(argv, doc=__doc__, module=__spec__.name, variants=VARIANTS, common=COMMON,
                      default_out="runs/compare", report=report)


if __name__ == "__main__":
    sys.exit(main())
