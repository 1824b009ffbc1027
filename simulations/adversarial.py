"""Adversarial clients: a share of the clients train on flipped labels (every attribute
v -> 4 - v, i.e. conflicting feedback). How much ROC-AUC does the global model lose, with
plain averaging and with robust rules?

    python -m simulations.adversarial [--set shards.flipped-clients=0.2] [--out DIR]
    python -m simulations.adversarial --summarize DIR      # tables and plot again, no runs

Each rule runs on the same split and seed, clean and with ``shards.flipped-clients``
(default 0.2: one client in five). ``fedavg`` and ``validated`` also run the fair reference
in which that very client is simply absent (``shards.absent-clients``: the other four
clients hold exactly the rows they hold in the flipped run): a rule that shuts the flipped
client out can at best match it. Written to ``--out``: one run directory per variant and
seed, ``results.csv`` / ``results.md`` (final ROC-AUC clean, flipped and absent, the drop
against the same rule's clean run and the gap to its absent run, in points, with their
standard errors), ``auc_per_round.png`` and ``variants.json`` (the exact configs).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fedgate.config.renamed import migrate
from fedgate.federated.report import line_plot
from fedgate.rundir import RunDir
from simulations.results import (contrast_cells, paired_difference, rows_from_dir, seed_dirs, summarize_run,
                                 write_table)
from simulations.study import SCALES, SEED_KEY, chosen, chosen_seeds, out_dir, parse_sets, run_study, study_parser

COMMON = {"shards.partitioner": "dirichlet", "shards.alpha": 0.5,  # rounds and sizing: the defaults
          "server.noise-rates": "", "server.report": False,
          "federation.fraction-evaluate": 0.0, "server.baselines": False}
RULES = {"fedavg": {"federation.strategy": "fedavg"},
         "median": {"federation.strategy": "median"},
         "trimmed-mean": {"federation.strategy": "trimmed-mean", "federation.trim-fraction": 0.2},
         "krum": {"federation.strategy": "krum", "federation.byzantine-clients": 1},
         "validated": {"federation.strategy": "validated", "federation.byzantine-clients": 1}}
FLIPPED = 0.2
ABSENT_RULES = ("fedavg", "validated")  # rules that also run the absent-client reference
KINDS = ("clean", "flipped", "absent")


def _keys(kind: str, share: float) -> dict:
    return {"shards.flipped-clients": share if kind == "flipped" else 0.0,
            "shards.absent-clients": share if kind == "absent" else 0.0}


VARIANTS = {f"{rule}-{kind}": {**keys, **_keys(kind, FLIPPED)}
            for rule, keys in RULES.items() for kind in KINDS if kind != "absent" or rule in ABSENT_RULES}
NUM_CLIENTS = 5


def summarize(run_dir: Path) -> dict:
    """The study row plus which clients trained on flipped labels."""
    row = summarize_run(run_dir)
    rounds = [r for r in RunDir(run_dir).rounds() if r["round"] > 0]
    row["flipped_partitions"] = sorted({int(c["partition-id"]) for r in rounds for c in r.get("clients", [])
                                        if c.get("flipped-rows", 0) > 0})
    return row


def write_results(out: Path, rows: dict[str, dict], flipped: float = FLIPPED) -> str:
    table = []
    for rule in RULES:
        clean, bad = rows.get(f"{rule}-clean"), rows.get(f"{rule}-flipped")
        if not (clean and bad):
            continue
        drop, se, _ = paired_difference(out, rows, f"{rule}-clean", f"{rule}-flipped")
        row = {"rule": rule, "seeds": bad.get("seeds", 1), "auc_clean": clean["auc"], "auc_flipped": bad["auc"],
               **dict(zip(("drop_points", "drop_se_points", "resolved"), contrast_cells(drop, se))),
               "flipped_partitions": ",".join(map(str, bad["flipped_partitions"])),
               "f1_clean": clean["f1"], "f1_flipped": bad["f1"]}
        if absent := rows.get(f"{rule}-absent"):
            gap, gap_se, _ = paired_difference(out, rows, f"{rule}-flipped", f"{rule}-absent")
            cells = contrast_cells(gap, gap_se)
            row.update(auc_absent=absent["auc"],
                       **dict(zip(("vs_absent_points", "vs_absent_se", "vs_absent_resolved"), cells)))
        table.append(row)
    columns = {"rule": "rule", "seeds": "seeds", "auc_clean": "ROC-AUC clean",
               "auc_flipped": f"ROC-AUC, {flipped:.0%} clients flipped", "drop_points": "drop (points)",
               "drop_se_points": "its SE (points; over seeds, or a paired bootstrap for one seed)",
               "resolved": "resolved (>= 2 SE)", "auc_absent": "ROC-AUC, those clients absent",
               "vs_absent_points": "flipped vs absent (points)", "vs_absent_se": "its SE",
               "vs_absent_resolved": "resolved", "flipped_partitions": "flipped partitions"}
    if not any("auc_absent" in row for row in table):
        for key in ("auc_absent", "vs_absent_points", "vs_absent_se", "vs_absent_resolved"):
            columns.pop(key)
    md = write_table(out, table, columns)
    line_plot(out / "auc_per_round.png",
              {name: (list(range(len(r["auc_per_round"]))), r["auc_per_round"]) for name, r in rows.items()},
              ylabel="server test ROC-AUC", title="clean vs flipped-label clients",
              dashed=[n for n in rows if not n.endswith("-flipped")], size=(7, 4.5))
    return md


def report(out: Path) -> str:
    """The tables and plot again from a finished (or partly finished) study."""
    rows = rows_from_dir(out, summarize)
    flipped = [migrate(json.loads((d / "config.json").read_text())["config"])["shards.flipped-clients"]
               for n in rows if n.endswith("-flipped") for d in list(seed_dirs(out, n).values())[:1]]
    return write_results(out, rows, flipped[0] if flipped else FLIPPED)


def main(argv: list[str] | None = None) -> int:
    p = study_parser(__doc__, VARIANTS, "runs/adversarial")
    p.set_defaults(num_supernodes=NUM_CLIENTS)
    args = p.parse_args(argv)
    if args.summarize:
        print(report(Path(args.summarize)))
        return 0
    names = chosen(p, args, VARIANTS)
    seeds = chosen_seeds(p, args)
    overrides = parse_sets(args.set)
    if SEED_KEY in overrides:
        p.error(f"set the seeds with --seeds, not --set {SEED_KEY}=...")
    variants = {n: {**COMMON, **SCALES[args.scale], **overrides, **VARIANTS[n]} for n in names}
    flipped = float(overrides.get("shards.flipped-clients", FLIPPED))
    for n in names:
        variants[n].update(_keys(n.rsplit("-", 1)[1], flipped))
    out = out_dir(args, "runs/adversarial")
    rows = run_study(out, variants, study=__spec__.name, num_supernodes=args.num_supernodes, timeout=args.timeout,
                     summarize=summarize, seeds=seeds)
    if not rows:
        return 1
    print(write_results(out, rows_from_dir(out, summarize), flipped))  # every variant the folder holds
    return 0 if len(rows) == len(names) else 1


if __name__ == "__main__":
    sys.exit(main())
