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

import argparse
import csv
import json
import sys
import time
from pathlib import Path

from fedgate.federated.report import line_plot
from fedgate.federated.rundir import SUMMARY_FILE, RunDir
from simulations.run import simulate

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


def _value(v) -> str:
    return f'"{v}"' if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)


def run_config(variant: str, overrides: dict) -> str:
    flat = {**COMMON, **overrides, **VARIANTS[variant]}
    return " ".join(f"{k}={_value(v)}" for k, v in flat.items())


def summarize_run(run_dir: Path) -> dict:
    """One variant's row from its run directory."""
    run = RunDir(run_dir)
    rounds = run.rounds()
    summary = run.read_json(SUMMARY_FILE)
    if summary.get("status") != "completed":
        raise RuntimeError(f"{run_dir}: the run did not complete ({summary.get('error', 'no error recorded')})")
    trained = [r for r in rounds if r["round"] > 0]
    evaluated = [r for r in rounds if r.get("server_eval")]
    final = evaluated[-1]["server_eval"]
    return {
        "auc": final["auc"], "f1": final["f1"],
        "uplink_mib": sum(r["bytes"]["array_up"] for r in trained) / 2**20,
        "uplink_wire_mib": sum(r["bytes"]["up"] for r in trained) / 2**20,
        "wall_s": summary["wall_s"],
        "pruned": len(trained[-1].get("strategy", {}).get("pruned", [])) if trained else 0,
        "auc_per_round": [r["server_eval"]["auc"] for r in evaluated],
        "trainable_percent": rounds[0]["params"]["percent"],
    }


def write_results(out: Path, rows: dict[str, dict]) -> str:
    """results.csv, results.md and auc_per_round.png; returns the markdown table."""
    base = rows.get(BASELINE)
    fields = ["variant", "auc", "auc_vs_baseline_points", "f1", "uplink_mib", "uplink_vs_fedavg", "pruned", "wall_s"]
    ref_up = rows.get("fedavg", {}).get("uplink_mib")
    table = []
    for name, r in rows.items():
        table.append({"variant": name, "auc": r["auc"], "f1": r["f1"], "uplink_mib": r["uplink_mib"],
                      "auc_vs_baseline_points": 100 * (r["auc"] - base["auc"]) if base else float("nan"),
                      "uplink_vs_fedavg": r["uplink_mib"] / ref_up if ref_up else float("nan"),
                      "pruned": r["pruned"], "wall_s": r["wall_s"]})
    with (out / "results.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(table)
    lines = ["| strategy | final ROC-AUC | vs plain fedavg-ab (points) | F1 | uplink MiB | uplink vs fedavg "
             "| adapters pruned | wall s |", "|---|---|---|---|---|---|---|---|"]
    for t in table:
        lines.append(f"| {t['variant']} | {t['auc']:.4f} | {t['auc_vs_baseline_points']:+.2f} | {t['f1']:.4f} | "
                     f"{t['uplink_mib']:.2f} | {t['uplink_vs_fedavg']:.2f} | {t['pruned']} | {t['wall_s']:.0f} |")
    md = "\n".join(lines) + "\n"
    (out / "results.md").write_text(md)
    _plot(out / "auc_per_round.png", rows)
    return md


def _plot(path: Path, rows: dict[str, dict]) -> None:
    line_plot(path, {name: (list(range(len(r["auc_per_round"]))), r["auc_per_round"]) for name, r in rows.items()},
              ylabel="server test ROC-AUC", title="ROC-AUC per round per strategy", dashed=[BASELINE], size=(7, 4.5))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated; choices: " + ", ".join(VARIANTS))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a shared config key")
    p.add_argument("--out", default="", help="results folder (default runs/compare-<time>)")
    p.add_argument("--num-supernodes", type=int, default=4)
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    p.add_argument("--summarize", metavar="OUT_DIR", help="rebuild the table and plot from a finished comparison")
    args = p.parse_args(argv)
    if args.summarize:
        out = Path(args.summarize)
        names = json.loads((out / "variants.json").read_text())
        rows = {n: summarize_run(out / n) for n in names if (out / n / SUMMARY_FILE).is_file()}
        print(write_results(out, rows))
        return 0
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if unknown := [v for v in variants if v not in VARIANTS]:
        p.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    overrides = {}
    for kv in args.set:
        key, sep, value = kv.partition("=")
        if not sep:
            p.error(f"--set expects KEY=VALUE, got {kv!r}")
        overrides[key] = value
    out = Path(args.out or f"runs/compare-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "variants.json").write_text(json.dumps({v: run_config(v, overrides) for v in variants}, indent=1))
    rows = {}
    for i, name in enumerate(variants, start=1):
        print(f"[{i}/{len(variants)}] {name}: {run_config(name, overrides)}", flush=True)
        code, run_dir = simulate([run_config(name, overrides)], num_supernodes=args.num_supernodes,
                                 out=out / name, timeout=args.timeout)
        if code != 0:
            print(f"{name}: the run failed (exit {code}); see {run_dir}", file=sys.stderr)
            continue
        rows[name] = summarize_run(run_dir)
        r = rows[name]
        print(f"[{i}/{len(variants)}] {name}: AUC {r['auc']:.4f}, F1 {r['f1']:.4f}, uplink {r['uplink_mib']:.2f} MiB, "
              f"{r['wall_s']:.0f} s", flush=True)
    if not rows:
        return 1
    print(write_results(out, rows))
    return 0 if len(rows) == len(variants) else 1


if __name__ == "__main__":
    sys.exit(main())
