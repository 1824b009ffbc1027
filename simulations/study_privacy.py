"""Privacy against utility: central client-level DP (DP-FedAvg) at epsilon inf, 8 and 2
(delta 1e-5) for FedAvg on LoRA and for FFA-LoRA (A frozen, only B travels: half the
noised coordinates), 20 clients of which a quarter train each round.

    python -m simulations.study_privacy [--seeds 0,1,2] [--variants ...] [--set KEY=VALUE] [--out DIR]
    python -m simulations.report DIR                                   # tables and plots again, no runs

Every variant clips each update to ``CLIP`` and averages without weights, the epsilon-inf
rows included, so that a row differs from its method's epsilon-inf row by the noise alone.
Under DP the clients send no gate statistics and the head starts at zero (the round-0 ridge
head would release every client's exact feature statistics), so the gate prior is fixed.
Writes ``results.csv`` / ``.md`` (final ROC-AUC and epsilon per variant), ``privacy.csv`` /
``.md`` (each epsilon's drop against the same method at epsilon inf, paired per seed, and
FFA's drop minus FedAvg's: which method degrades less), the plots, and one run directory per
variant and seed.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fedgate.rundir import RunDir
from simulations.results import (contrast_cells, mean_and_se, paired_difference, rows_from_dir, standard_results,
                                 summarize_run, write_table)
from simulations.study import study_main

CLIENTS = 20
CLIP = 2.0
EPSILONS = {"inf": 0.0, "8": 8.0, "2": 2.0}
METHODS = {"fedavg": {"federation.strategy": "fedavg"}, "ffa": {"federation.strategy": "ffa"}}
COMMON = {"federation.fraction-train": 0.25, "federation.rounds": 8, "federation.clip-norm": CLIP,
          "federation.weighting": "uniform", "federation.gate-prior": "fixed", "train.head-init": "zero",
          "federation.dp-delta": 1e-5, "server.noise-rates": "", "server.report": False,
          "federation.fraction-evaluate": 0.0, "server.baselines": False}


def _privacy(eps: float) -> dict:
    return {"federation.dp": "central", "federation.dp-epsilon": eps} if eps else {"federation.dp": "off"}


VARIANTS = {f"{method}-eps-{name}": {**keys, **_privacy(eps)}
            for method, keys in METHODS.items() for name, eps in EPSILONS.items()}


def summarize(run_dir: Path) -> dict:
    """The study row plus the final epsilon and noise multiplier (inf and 0 without DP)."""
    row = summarize_run(run_dir)
    private = [r["privacy"] for r in RunDir(run_dir).rounds() if r.get("privacy")]
    row["epsilon"] = private[-1]["epsilon"] if private else float("inf")
    row["noise_multiplier"] = private[-1]["noise_multiplier"] if private else 0.0
    return row


def degradation(out: Path, rows: dict[str, dict]) -> str:
    """Each epsilon's drop against its method's epsilon-inf run, and FFA's drop minus
    FedAvg's at the same epsilon (negative: FFA degrades less), all paired per seed."""
    table = []
    for name, eps in EPSILONS.items():
        if not eps:
            continue
        row: dict = {"epsilon": name}
        for method in METHODS:
            clean, noisy = f"{method}-eps-inf", f"{method}-eps-{name}"
            if {clean, noisy} <= rows.keys():
                drop, se, _ = paired_difference(out, rows, clean, noisy)
                row.update({f"{method}_auc": rows[noisy]["auc"],
                            **dict(zip((f"{method}_drop", f"{method}_se"), contrast_cells(drop, se)[:2]))})
        # FFA's drop minus FedAvg's = (ffa_inf - ffa_eps) - (fedavg_inf - fedavg_eps), per seed
        names = ("ffa-eps-inf", f"ffa-eps-{name}", "fedavg-eps-inf", f"fedavg-eps-{name}")
        if set(names) <= rows.keys():
            seeds = set.intersection(*(set(rows[n].get("per_seed", {})) for n in names))
            per_seed = [100 * ((rows[names[0]]["per_seed"][s]["auc"] - rows[names[1]]["per_seed"][s]["auc"])
                               - (rows[names[2]]["per_seed"][s]["auc"] - rows[names[3]]["per_seed"][s]["auc"]))
                        for s in sorted(seeds)]
            if per_seed:
                diff, se = mean_and_se(per_seed)
                se = se if len(per_seed) > 1 else float("nan")
                row.update(zip(("ffa_minus_fedavg", "ffa_minus_fedavg_se", "resolved"), contrast_cells(diff, se)))
        if len(row) > 1:  # some run of this epsilon finished
            table.append(row)
    if not table:
        return ""
    return "\n" + write_table(out, table, {
        "epsilon": "epsilon (delta 1e-5)", "fedavg_auc": "FedAvg ROC-AUC", "fedavg_drop": "FedAvg drop vs inf (points)",
        "fedavg_se": "its SE", "ffa_auc": "FFA ROC-AUC", "ffa_drop": "FFA drop vs inf (points)", "ffa_se": "its SE",
        "ffa_minus_fedavg": "FFA drop - FedAvg drop (points)", "ffa_minus_fedavg_se": "its SE",
        "resolved": ">= 2 SE"}, name="privacy")


def report(out: Path) -> str:
    rows = rows_from_dir(out, summarize)
    md = standard_results(out, rows, baseline="fedavg-eps-inf", title="privacy vs utility",
                          extra={"epsilon": "epsilon after the last round", "noise_multiplier": "noise multiplier"})
    return md + degradation(out, rows)


def main(argv: list[str] | None = None) -> int:
    return study_main(argv, doc=__doc__, module=__spec__.name, variants=VARIANTS, common=COMMON,
                      default_out="runs/study-privacy", report=report, num_supernodes=CLIENTS)


if __name__ == "__main__":
    sys.exit(main())
