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
from simulations.study import config_string, rows_from_dir, study_main, summarize_run, write_table

COMMON = {"federation.alpha": 0.2, "federation.partitioner": "dirichlet", "federation.rounds": 4,
          "data.limit": 800, "server.eval-limit": 300, "server.report": False}
PLAIN = {"adapter.token-gate": False, "adapter.structural-gate": False}
VARIANTS: dict[str, dict] = {
    "fedavg-ab-plain": {"federation.strategy": "fedavg-ab", **PLAIN},  # plain LoRA, A and B averaged: the baseline
    "fedavg": {"federation.strategy": "fedavg"},  # gated LoRA from here on
    "exact": {"federation.strategy": "exact"},
    "gate-weighted": {"federation.strategy": "fedavg", "federation.weighting": "gates"},
    "ffa": {"federation.strategy": "ffa"},
    "fedadam": {"federation.strategy": "fedadam"},
    "median": {"federation.strategy": "median"},
    "pruning": {"federation.strategy": "fedavg", "federation.prune-threshold": 0.878, "federation.prune-patience": 1},
}
BASELINE = "fedavg-ab-plain"
__all__ = ["BASELINE", "VARIANTS", "run_config", "summarize_run", "write_results"]


def variant_config(variant: str, overrides: dict) -> dict:
    return {**COMMON, **overrides, **VARIANTS[variant]}


def run_config(variant: str, overrides: dict) -> str:
    return config_string(variant_config(variant, overrides))


def write_results(out: Path, rows: dict[str, dict]) -> str:
    """results.csv, results.md and auc_per_round.png; returns the markdown table."""
    base = rows.get(BASELINE)
    ref_up = rows.get("fedavg", {}).get("uplink_mib")
    table = [{"variant": name, "auc": r["auc"],
              "auc_vs_baseline_points": 100 * (r["auc"] - base["auc"]) if base else float("nan"),
              "f1": r["f1"], "uplink_mib": r["uplink_mib"],
              "uplink_vs_fedavg": r["uplink_mib"] / ref_up if ref_up else float("nan"),
              "pruned": r["pruned"], "wall_s": r["wall_s"]} for name, r in rows.items()]
    for t in table:  # fixed formats for the README table
        t["auc_vs_baseline_points"] = f"{t['auc_vs_baseline_points']:+.2f}"
        t["uplink_mib"], t["uplink_vs_fedavg"] = f"{t['uplink_mib']:.2f}", f"{t['uplink_vs_fedavg']:.2f}"
        t["wall_s"] = f"{t['wall_s']:.0f}"
    md = write_table(out, table, {"variant": "strategy", "auc": "final ROC-AUC",
                                  "auc_vs_baseline_points": "vs plain fedavg-ab (points)", "f1": "F1",
                                  "uplink_mib": "uplink MiB", "uplink_vs_fedavg": "uplink vs fedavg",
                                  "pruned": "adapters pruned", "wall_s": "wall s"})
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
