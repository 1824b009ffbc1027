"""Real human preferences, centralized: `fedgate train` on the HH-RLHF harmlessness pairs,
next to the cheap pair baselines fitted on the same training pairs, over seeds.

    python -m simulations.bench_preferences [--data ../shared/data/hh-rlhf-harmless/pairs.jsonl.gz]
        [--out runs/bench-preferences] [--seeds 0,1,2] [--set KEY=VALUE ...]
    python -m simulations.bench_preferences --summarize [--out runs/bench-preferences]

Each seed is one run in ``OUT/seed-<s>`` (a finished run is not run again). The data split
(80/10/10 by prompt, ``data.seed`` 0) is the same for every seed, so the seeds share their
test pairs; ``train.seed`` changes the adapters' start and the batch order. Writes
``OUT/preferences.md`` / ``.json``: test pairwise accuracy (mean ± SE over seeds, and each
seed's 95% bootstrap interval over the test pairs), the accuracy before any adapter step
(the Bradley-Terry head on frozen features) and the baselines (reply length, TF-IDF
Bradley-Terry, frozen-feature probe), wall time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "hh-rlhf-harmless" / "pairs.jsonl.gz"
BASELINES = ("length", "tfidf_logreg", "frozen_probe")


def run_seed(data: Path, out: Path, seed: int, overrides: dict | None = None) -> dict:
    from fedgate.config import FedgateConfig
    from fedgate.centralized import train_centralized

    metrics_file = out / "metrics.json"
    if not metrics_file.is_file():
        cfg = FedgateConfig.from_flat({"data.source": str(data), "data.bad-rows": "skip", **(overrides or {}),
                                       "train.seed": seed})
        t0 = time.perf_counter()
        metrics = train_centralized(cfg, out, progress=False)
        metrics["bench_wall_s"] = time.perf_counter() - t0
        metrics_file.write_text(json.dumps(metrics, indent=1, default=float))
    return json.loads(metrics_file.read_text())


def _mean_se(values: list[float], fmt: str = ".4f") -> str:
    v = np.asarray(values, float)
    se = v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0.0
    return f"{v.mean():{fmt}} ± {se:{fmt}}" if len(v) > 1 else f"{v.mean():{fmt}}"


def summarize(out: Path) -> str:
    runs = {int(d.name.removeprefix("seed-")): json.loads((d / "metrics.json").read_text())
            for d in sorted(out.glob("seed-*")) if (d / "metrics.json").is_file()}
    if not runs:
        raise SystemExit(f"{out}: no finished runs")
    acc = [m["test"]["pairwise_accuracy"] for m in runs.values()]
    lines = ["| figure | " + " | ".join(f"seed {s}" for s in runs) + " | mean ± SE |",
             "|---|" + "---|" * (len(runs) + 1)]

    def row(name: str, values: list[float], cells: list[str] | None = None, fmt: str = ".4f") -> None:
        cells = cells or [f"{v:{fmt}}" for v in values]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_mean_se(values, fmt)} |")

    row("test pairwise accuracy (95% CI over test pairs)", acc,
        [f"{m['test']['pairwise_accuracy']:.4f} ({m['test']['pairwise_accuracy_low']:.3f}-"
         f"{m['test']['pairwise_accuracy_high']:.3f})" for m in runs.values()])
    row("before any adapter step (Bradley-Terry head on frozen features)",
        [m["test_at_step0"]["pairwise_accuracy"] for m in runs.values()])
    for b in BASELINES:
        row(f"baseline: {b}", [m["baselines"][b] for m in runs.values()])
    longer = {m["baselines"]["length_longer_wins"] for m in runs.values()}
    row("wall s", [m.get("bench_wall_s", m["total_wall_s"]) for m in runs.values()], fmt=".0f")
    first = next(iter(runs.values()))
    md = "\n".join(lines) + (
        f"\n\n{first['data']['train']} training, {first['data']['validation']} validation and "
        f"{first['data']['test']} test pairs; {first['train']['steps']} optimizer steps of about "
        f"{first['train']['examples_seen'] // max(1, first['train']['steps']) // 2} pairs. The length rule picks "
        f"{'the longer' if longer == {1.0} else 'the shorter' if longer == {0.0} else 'either'} reply on these "
        f"training pairs.\n")
    (out / "preferences.md").write_text(md)
    (out / "preferences.json").write_text(json.dumps(runs, indent=1, default=float))
    return md


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--out", default="runs/bench-preferences")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every seed (recipe trials); kept in OUT/settings.json")
    p.add_argument("--summarize", action="store_true", help="only rebuild the table from finished runs")
    args = p.parse_args(argv)
    out = Path(args.out)
    if not args.summarize:
        from simulations.study import parse_sets

        try:
            overrides = parse_sets(args.set)
        except ValueError as e:
            p.error(str(e))
        if "train.seed" in overrides:
            p.error("set the seeds with --seeds, not --set train.seed=...")
        data = Path(args.data)
        if not data.is_file():
            print(f"{data}: absent; nothing to run (the HH-RLHF pairs live outside the repository)", file=sys.stderr)
            return 1
        settings = out / "settings.json"
        if settings.is_file() and json.loads(settings.read_text()) != overrides:
            p.error(f"{out} holds runs with other overrides ({settings}); choose another --out")
        out.mkdir(parents=True, exist_ok=True)
        settings.write_text(json.dumps(overrides, indent=1))
        for seed in (int(s) for s in args.seeds.split(",")):
            m = run_seed(data, out / f"seed-{seed}", seed, overrides)
            print(f"seed {seed}: test pairwise accuracy {m['test']['pairwise_accuracy']:.4f}", flush=True)
    print(summarize(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
