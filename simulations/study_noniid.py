"""Non-IID degree: Dirichlet label skew from mild to extreme, topic skew (whole module
families per client), quantity skew and degradation-kind skew (each client sees only some
kinds of bad answer), FedProx, SCAFFOLD, FedAvgM, FedAdam, a head frozen at its federated
ridge fit and a head refitted from the clients' statistics (every round, or after the last)
on the strongest skew, against centralized training on the pooled rows with the
same total number of optimizer steps (the upper bound).

    python -m simulations.study_noniid [--variants ...] [--set KEY=VALUE] [--out DIR]
    python -m simulations.report DIR

The centralized run trains on all the federation's training rows for as many steps as the
IID federation's clients took together, and is scored by the same server evaluator on the
same test rows. Writes ``results.csv`` / ``results.md`` (baseline: IID), ``final_auc.png``
(centralized as a dashed line), ``auc_per_round.png``, ``centralized/`` (its metrics),
``variants.json`` and one run directory per variant.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fedgate.rundir import RunDir
from simulations.results import (contrast_cells, mean_and_se, paired_difference, resolved, rows_from_dir, seed_dir,
                                 standard_results, write_table)
from simulations.study import SEED_KEY, config_string, study_main

COMMON = {"server.noise-rates": "",  # rounds and sizing: the defaults
          "server.report": False, "federation.fraction-evaluate": 0.0, "server.baselines": False}
VARIANTS = {
    "iid": {"shards.partitioner": "iid"},
    "dirichlet-1.0": {"shards.partitioner": "dirichlet", "shards.alpha": 1.0},
    "dirichlet-0.3": {"shards.partitioner": "dirichlet", "shards.alpha": 0.3},
    "dirichlet-0.1": {"shards.partitioner": "dirichlet", "shards.alpha": 0.1},
    "topic-skew": {"shards.partitioner": "domain"},
    "quantity-skew": {"shards.partitioner": "quantity", "shards.alpha": 0.5},
    "kind-skew": {"shards.partitioner": "kind"},
    # can a rule built for client drift win back what FedAvg loses to the strongest skew?
    "dirichlet-0.1-fedprox": {"shards.partitioner": "dirichlet", "shards.alpha": 0.1,
                              "federation.strategy": "fedprox"},
    "dirichlet-0.1-fedprox-mu1": {"shards.partitioner": "dirichlet", "shards.alpha": 0.1,
                                  "federation.strategy": "fedprox", "train.proximal-mu": 1.0},  # 100x the default
    "dirichlet-0.1-scaffold": {"shards.partitioner": "dirichlet", "shards.alpha": 0.1,
                               "federation.strategy": "scaffold"},
    # or a server optimizer (its defaults: FedAvgM momentum 0.9 at step 1; FedAdam step 0.01)
    "dirichlet-0.1-fedavgm": {"shards.partitioner": "dirichlet", "shards.alpha": 0.1,
                              "federation.strategy": "fedavgm"},
    "dirichlet-0.1-fedadam": {"shards.partitioner": "dirichlet", "shards.alpha": 0.1,
                              "federation.strategy": "fedadam"},
    # or keeping each client off the shared head: the federated ridge head (fitted on every
    # client's statistics) stays fixed and the clients train only adapters and gates
    "dirichlet-0.1-frozen-head": {"shards.partitioner": "dirichlet", "shards.alpha": 0.1,
                                  "train.lr-head": 0.0},
    # or replacing the averaged head with the pooled-rows ridge fit from the clients' summed
    # statistics under the new adapters: after every round, or once after the last
    "dirichlet-0.1-head-refit": {"shards.partitioner": "dirichlet", "shards.alpha": 0.1,
                                 "federation.head-refit": "every-round"},
    "dirichlet-0.1-head-refit-final": {"shards.partitioner": "dirichlet", "shards.alpha": 0.1,
                                       "federation.head-refit": "final"},
    # what the same refit does without skew: a rule that lifts every split wins back no cost
    "iid-head-refit-final": {"shards.partitioner": "iid", "federation.head-refit": "final"},
}
CENTRALIZED = "centralized"
# variant -> the FedAvg run on the same split it tries to improve on
RECOVERY = {f"dirichlet-0.1-{rule}": "dirichlet-0.1"
            for rule in ("fedprox", "fedprox-mu1", "scaffold", "fedavgm", "fedadam", "frozen-head", "head-refit", "head-refit-final")}


def total_client_steps(run_dir: Path) -> int:
    """Optimizer steps all clients of a run took together."""
    return int(sum(c.get("steps", 0) for r in RunDir(run_dir).rounds() if r["round"] > 0 for c in r["clients"]))


def federation_settings(flat: dict) -> dict:
    """What a federation run with the overrides ``flat`` used, as a centralized config: the
    app's defaults (``[tool.flwr.app.config]``: its rows, learning rates, schedule, server
    evaluation rows) under ``flat``, without the keys only a federation has."""
    from fedgate.launch.simulation import REPO, app_config

    return {k: v for k, v in {**app_config(REPO), **flat}.items()
            if not k.startswith(("federation.", "simulation."))}


def centralized_bound(flat: dict, steps: int, out: Path) -> dict:
    """Train on the pooled training rows for ``steps`` steps, then score the adapters with
    the federation's own server evaluator (same test rows, same validation cut)."""
    from fedgate.config import FedgateConfig
    from fedgate.federated.evaluator import ServerEvaluator
    from fedgate.centralized import train_centralized
    from fedgate.state import load_state

    cfg = FedgateConfig.from_flat({**flat, "train.max-steps": steps})
    metrics = train_centralized(cfg, out, baselines=False, progress=True)
    state, _ = load_state(out / "adapters.safetensors")
    server_eval, _ = ServerEvaluator(cfg, progress=False).evaluate({k: v.numpy() for k, v in state.items()})
    result = {"steps": metrics["train"]["steps"], "server_eval": server_eval, "wall_s": metrics["total_wall_s"],
              "trainable_percent": metrics["params"]["percent"], "config": config_string(cfg.to_flat())}
    (out / "server_eval.json").write_text(json.dumps(result, indent=1, default=float))
    return result


def _after(out: Path, flat: dict[str, dict], args: argparse.Namespace) -> None:
    """One centralized bound per seed, matched to that seed's IID federation."""
    seeds = sorted({int(v) for v in args.seeds.split(",") if v.strip()})
    for seed in seeds:
        source = "iid" if (seed_dir(out, "iid", seed) / "rounds.jsonl").is_file() else next(iter(flat))
        if not (seed_dir(out, source, seed) / "rounds.jsonl").is_file():
            continue
        steps = total_client_steps(seed_dir(out, source, seed))
        target = seed_dir(out, CENTRALIZED, seed)
        if (target / "server_eval.json").is_file():
            print(f"centralized seed {seed}: already in {target}; reusing it", flush=True)
            continue
        print(f"centralized seed {seed}: {steps} steps (the {source} federation's clients together)", flush=True)
        centralized_bound({**federation_settings(flat[source]), SEED_KEY: seed}, steps, target)


def report(out: Path) -> str:
    rows = rows_from_dir(out)
    reference = None
    bounds = [json.loads(f.read_text()) for f in sorted((out / CENTRALIZED).glob("seed-*/server_eval.json"))]
    if bounds:
        auc, se = mean_and_se([c["server_eval"]["auc"] for c in bounds])
        label = f"centralized, {bounds[0]['steps']} steps" + (f", {len(bounds)} seeds (SE {se:.4f})" if len(bounds) > 1 else "")
        reference = (label, auc)
    md = standard_results(out, rows, baseline="iid", title="non-IID degree vs centralized", reference=reference)
    if reference is not None:
        gap = [{"variant": n, "auc": r["auc"], "gap_points": f"{100 * (r['auc'] - reference[1]):+.2f}"}
               for n, r in rows.items()]
        md += "\n" + write_table(out, gap, {"variant": "variant", "auc": "final ROC-AUC",
                                            "gap_points": f"vs {reference[0]} ({reference[1]:.4f}), points"},
                                 name="vs_centralized")
    return md + recovery(out, rows)


def recovery(out: Path, rows: dict[str, dict]) -> str:
    """For each rule run on a skewed split: FedAvg's cost on that split (IID minus skewed,
    paired) and how many of those points the rule wins back (rule minus FedAvg, paired), as a
    share of the cost. Empty when the runs are missing."""
    table = []
    for name, skewed in RECOVERY.items():
        if not {name, skewed, "iid"} <= rows.keys():
            continue
        cost, cost_se, _ = paired_difference(out, rows, "iid", skewed)
        gain, gain_se, _ = paired_difference(out, rows, name, skewed)
        table.append({"variant": name, "split": skewed,
                      **dict(zip(("cost_points", "cost_se", "cost_resolved"), contrast_cells(cost, cost_se))),
                      **dict(zip(("gain_points", "gain_se", "gain_resolved"), contrast_cells(gain, gain_se))),
                      # a share of a cost that is itself inside the noise means nothing
                      "share_recovered": f"{gain / cost:.0%}" if cost > 0 and resolved(cost, cost_se) == "yes" else "-"})
    if not table:
        return ""
    return "\n" + write_table(out, table, {
        "variant": "rule on the skewed split", "split": "split", "cost_points": "FedAvg's non-IID cost (IID - split, points)",
        "cost_se": "its SE", "cost_resolved": ">= 2 SE", "gain_points": "rule - FedAvg on the split (points)",
        "gain_se": "its SE", "gain_resolved": ">= 2 SE", "share_recovered": "share of the cost won back"}, name="recovery")


def main(argv: list[str] | None = None) -> int:
    return study_main(argv, doc=__doc__, module=__spec__.name, variants=VARIANTS, common=COMMON,
                      default_out="runs/study-noniid", report=report, after=_after)


if __name__ == "__main__":
    sys.exit(main())
