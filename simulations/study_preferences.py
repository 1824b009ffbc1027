"""Real human preferences in a federation: the HH-RLHF harmlessness pairs split over clients,
FedAvg against two other strategies and an IID split, next to centralized training on the
same pairs for the same number of optimizer steps.

    python -m simulations.study_preferences [--seeds 0,1,2] [--variants ...] [--set KEY=VALUE]
        [--data ../shared/data/hh-rlhf-harmless/pairs.jsonl.gz] [--out DIR]
    python -m simulations.study_preferences --summarize DIR

Every variant trains by Bradley-Terry on the file's training pairs (80% of its prompts),
split over 4 clients (default: Dirichlet(0.5) skew over whether the chosen reply is the
longer one), and is scored by pairwise accuracy on the held-out test pairs by the server.
``centralized`` trains on all those training pairs for as many steps as the ``fedavg``
federation's clients took together and is scored by the same server evaluator on the same
pairs (``simulations.study_noniid.centralized_bound``). Differences to ``centralized`` are
paired per seed (runs of one seed share their test pairs). Writes ``results.md`` / ``.csv``
and one run directory per variant and seed; a finished run is not run again. Without the
data file the study says where it looked and stops.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from simulations.results import mean_and_se, resolved, seed_dir, write_table
from simulations.study import SCALES, SEED_KEY, chosen, chosen_seeds, out_dir, parse_sets, run_study, study_parser
from simulations.study_noniid import centralized_bound, federation_settings, total_client_steps

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "hh-rlhf-harmless" / "pairs.jsonl.gz"
COMMON = {"data.bad-rows": "skip", "server.report": False, "federation.fraction-evaluate": 0.0,
          "server.baselines": True, "server.eval-limit": 0}
VARIANTS = {
    "fedavg": {},
    "fedprox": {"federation.strategy": "fedprox"},
    "scaffold": {"federation.strategy": "scaffold"},
    "fedavg-iid": {"shards.partitioner": "iid"},
}
CENTRALIZED = "centralized"


def summarize_pairs(run_dir: Path) -> dict:
    """One finished federation on pairs as a row: final pairwise accuracy and its interval,
    per round, under noise, the pair baselines of round 0, uplink and wall time."""
    from fedgate.rundir import SUMMARY_FILE, RunDir

    run = RunDir(run_dir)
    summary = run.read_json(SUMMARY_FILE)
    if summary.get("status") != "completed":
        raise RuntimeError(f"{run_dir}: the run did not complete ({summary.get('error', 'no error recorded')})")
    rounds = run.rounds()
    evaluated = [r for r in rounds if r.get("server_eval")]
    final = evaluated[-1]["server_eval"]
    baselines = rounds[0].get("baselines") or {}
    return {
        "pairwise_accuracy": final["pairwise_accuracy"],
        "low": final["pairwise_accuracy_low"], "high": final["pairwise_accuracy_high"],
        **{k: v for k, v in final.items() if k.startswith("pairwise_accuracy_noise_")},
        "before_training": evaluated[0]["server_eval"]["pairwise_accuracy"],
        **_at_best_validation(summary),
        "pairwise_accuracy_per_round": [r["server_eval"]["pairwise_accuracy"] for r in evaluated],
        **{f"baseline_{k}": v for k, v in baselines.items() if k in ("length", "tfidf_logreg", "frozen_probe")},
        "steps": float(total_client_steps(run_dir)),
        "uplink_mib": sum(r["bytes"]["array_up"] for r in rounds if r["round"] > 0) / 2**20,
        "wall_s": summary["wall_s"],
    }


SUMMARY_COLUMNS = ("variant", "seeds", "pairwise_accuracy", "se", "vs_centralized", "vs_se", "resolved",
                   "at_best_validation", "best_vs_centralized", "best_vs_se", "before_training",
                   "baseline_tfidf_logreg", "baseline_length")


def _at_best_validation(summary: dict) -> dict:
    """The test pairwise accuracy of the round picked on the validation pairs, and that round
    (runs recorded before the server scored validation have neither)."""
    best = summary.get("best_by_validation")
    if not best or "pairwise_accuracy" not in best:
        return {}
    return {"at_best_validation": best["pairwise_accuracy"], "best_round": float(best["round"])}


def run_centralized(out: Path, flat: dict, seeds: tuple[int, ...]) -> None:
    """Per seed, centralized training matched to that seed's FedAvg federation (its pairs,
    settings and total client steps), scored by the server evaluator."""
    for seed in seeds:
        fed = seed_dir(out, "fedavg", seed)
        target = seed_dir(out, CENTRALIZED, seed)
        if (target / "server_eval.json").is_file() or not (fed / "rounds.jsonl").is_file():
            continue
        steps = total_client_steps(fed)
        print(f"centralized seed {seed}: {steps} steps (the fedavg federation's clients together)", flush=True)
        centralized_bound({**federation_settings(flat), SEED_KEY: seed}, steps, target)


def _per_seed(out: Path) -> dict[str, dict[int, dict]]:
    names = [*json.loads((out / "variants.json").read_text()), CENTRALIZED]
    rows: dict[str, dict[int, dict]] = {}
    for name in names:
        for d in sorted((out / name).glob("seed-*")):
            seed = int(d.name.removeprefix("seed-"))
            if name == CENTRALIZED and (d / "server_eval.json").is_file():
                r = json.loads((d / "server_eval.json").read_text())
                ev = r["server_eval"]
                rows.setdefault(name, {})[seed] = {"pairwise_accuracy": ev["pairwise_accuracy"],
                                                   "low": ev["pairwise_accuracy_low"],
                                                   "high": ev["pairwise_accuracy_high"],
                                                   "steps": float(r["steps"]), "wall_s": r["wall_s"]}
            elif name != CENTRALIZED and (d / "summary.json").is_file():
                try:
                    rows.setdefault(name, {})[seed] = summarize_pairs(d)
                except RuntimeError as e:
                    print(e, file=sys.stderr)
    return rows


def report(out: Path) -> str:
    """``results.md`` / ``.csv``: per variant the mean ± SE over seeds of the test pairwise
    accuracy, its difference to centralized (paired per seed), the baselines and costs; and
    ``summary.md``, the same rows in fewer columns."""
    per_seed = _per_seed(out)
    central = per_seed.get(CENTRALIZED, {})
    table = []
    for name, seeds in per_seed.items():
        values = list(seeds.values())
        acc, se = mean_and_se([v["pairwise_accuracy"] for v in values])
        row = {"variant": name, "seeds": len(values), "pairwise_accuracy": acc,
               "se": f"{se:.4f}" if len(values) > 1 else "",
               "interval": "" if len(values) > 1 else f"{values[0]['low']:.3f}-{values[0]['high']:.3f}",
               "steps": f"{mean_and_se([v['steps'] for v in values])[0]:.0f}",
               "wall_s": f"{mean_and_se([v['wall_s'] for v in values])[0]:.0f}"}
        for key in ("at_best_validation", "best_round", "before_training", "baseline_length", "baseline_tfidf_logreg",
                    "baseline_frozen_probe"):
            if all(key in v for v in values):
                row[key] = mean_and_se([v[key] for v in values])[0]
        shared = sorted(set(seeds) & set(central))
        if name != CENTRALIZED and shared:
            diff, dse = mean_and_se([100 * (seeds[s]["pairwise_accuracy"] - central[s]["pairwise_accuracy"])
                                     for s in shared])
            row.update(vs_centralized=f"{diff:+.2f}", vs_se=f"{dse:.2f}" if len(shared) > 1 else "",
                       resolved=resolved(diff, dse) if len(shared) > 1 else "")
            best = [s for s in shared if "at_best_validation" in seeds[s]]
            if best:  # centralized keeps its best validation state too: the like-for-like difference
                bdiff, bse = mean_and_se([100 * (seeds[s]["at_best_validation"] - central[s]["pairwise_accuracy"])
                                          for s in best])
                row.update(best_vs_centralized=f"{bdiff:+.2f}", best_vs_se=f"{bse:.2f}" if len(best) > 1 else "")
        table.append(row)
    columns = {"variant": "variant", "seeds": "seeds", "pairwise_accuracy": "test pairwise accuracy",
               "se": "its SE", "interval": "95% interval (one seed)", "vs_centralized": "vs centralized (points)",
               "vs_se": "SE (paired)", "resolved": "resolved (>= 2 SE)",
               "at_best_validation": "at the best round on validation", "best_round": "that round (mean)",
               "best_vs_centralized": "that vs centralized (points)", "best_vs_se": "SE (paired)",
               "before_training": "before training",
               "baseline_length": "length rule", "baseline_tfidf_logreg": "TF-IDF", "baseline_frozen_probe":
               "frozen probe", "steps": "optimizer steps", "wall_s": "wall s"}
    write_table(out, table, {k: columns[k] for k in SUMMARY_COLUMNS}, name="summary")  # the README's excerpt
    return write_table(out, table, columns)


def main(argv: list[str] | None = None) -> int:
    p = study_parser(__doc__, VARIANTS, "runs/study-preferences")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="a preference-pair file (default: the HH-RLHF pairs)")
    args = p.parse_args(argv)
    if args.summarize:
        print(report(Path(args.summarize)))
        return 0
    data = Path(args.data)
    if not data.is_file():
        print(f"no preference data at {data}: give --data PATH (the study needs a pair file)", file=sys.stderr)
        return 2
    names = chosen(p, args, VARIANTS)
    seeds = chosen_seeds(p, args)
    overrides = parse_sets(args.set)
    out = out_dir(args, "runs/study-preferences")
    common = {**COMMON, "data.source": str(data.resolve()), **SCALES[args.scale], **overrides}
    flat = {n: {**common, **VARIANTS[n]} for n in names}
    rows = run_study(out, flat, study=__spec__.name, num_supernodes=args.num_supernodes, timeout=args.timeout,
                     summarize=summarize_pairs, seeds=seeds)
    if "fedavg" in rows:
        run_centralized(out, common, seeds)
    print(report(out))
    return 0 if len(rows) == len(names) else 1


if __name__ == "__main__":
    sys.exit(main())
