"""What every study script shares: run named config variants as real Flower simulations
into one results folder, once per seed, and report them (simulations/results.py).

A study is a dict ``{variant name: flat run config}``, run once per seed (``--seeds``,
default 0; a seed sets ``train.seed``, so runs of one seed share their data split and test
rows and differences between variants are paired per seed). ``run_study`` writes
``variants.json`` (the exact config of every variant) and one run directory per variant
and seed, ``OUT/<variant>/seed-<s>``; a run directory that already holds a completed run
with the same config is not run again, so an interrupted study picks up where it stopped.
Every run of a study reads and writes one store of the frozen lower layers' output
(``train.cache-dir``, a temporary folder removed at the end): only the first run of a seed
computes those states, so it is the slower one; the figures do not change.
``--summarize OUT`` in each script rebuilds the tables from those directories without
running anything; reading the runs back into rows and tables is simulations/results.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from fedgate.config.renamed import migrate_config_string
from fedgate.launch.simulation import simulate
from fedgate.rundir import SUMMARY_FILE, RunDir
from simulations.results import STUDY_FILE, VARIANTS_FILE, combine_seeds, seed_dir, summarize_run

log = logging.getLogger(__name__)

NUM_SUPERNODES = "simulation.num-supernodes"  # a variant key for run_study, not for the run config
SEED_KEY = "train.seed"
CACHE_KEY = "train.cache-dir"  # a variant that names its own store keeps it


def config_string(flat: dict) -> str:
    """A flat config as one ``--run-config`` string (TOML values)."""
    def value(v) -> str:
        return f'"{v}"' if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)
    return " ".join(f"{k}={value(v)}" for k, v in flat.items())


def parse_sets(items: list[str]) -> dict:
    """``--set KEY=VALUE`` arguments as a dict of TOML-typed values."""
    import tomllib

    out = {}
    for kv in items:
        key, sep, value = kv.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {kv!r}")
        try:
            out[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = value  # a bare string
    return out


def _already_done(run_dir: Path, config: str, nodes: int) -> bool:
    try:
        run = RunDir(run_dir)
        done = run.read_json(SUMMARY_FILE).get("status") == "completed"
        meta = run.read_json(STUDY_FILE)
        saved = migrate_config_string(meta.get("config", ""))  # a run recorded before a key moved still counts
        return done and saved == config and meta.get("num_supernodes", nodes) == nodes
    except (OSError, ValueError):
        return False


def _record_variants(out: Path, study: str, configs: dict[str, str], nodes: dict[str, int],
                     seeds: tuple[int, ...]) -> None:
    """Write ``variants.json`` and ``study.json``. A folder that already holds this study keeps
    the variants and seeds this call does not run: adding a variant to a finished study adds a
    row to its report instead of dropping the others (a variant run again with another config
    takes the new one)."""
    old_configs, old_meta = {}, {}
    if (out / STUDY_FILE).is_file() and (out / VARIANTS_FILE).is_file():
        old_meta = json.loads((out / STUDY_FILE).read_text())
        if old_meta.get("study") == study:
            old_configs = json.loads((out / VARIANTS_FILE).read_text())
        else:
            old_meta = {}
    old_nodes = old_meta.get("num_supernodes", {})
    (out / VARIANTS_FILE).write_text(json.dumps({**old_configs, **configs}, indent=1))
    (out / STUDY_FILE).write_text(json.dumps({
        "study": study, "num_supernodes": {**(old_nodes if isinstance(old_nodes, dict) else {}), **nodes},
        "seeds": sorted({*old_meta.get("seeds", []), *seeds})}, indent=1))


def run_study(out: Path, variants: dict[str, dict], *, study: str, num_supernodes: int = 4,
              timeout: float = 1800.0, summarize: Callable[[Path], dict] = summarize_run,
              seeds: tuple[int, ...] = (0,)) -> dict[str, dict]:
    """Run every variant once per seed (one simulation each) into ``out/<name>/seed-<s>``;
    returns the rows (:func:`combine_seeds`) of the variants with at least one completed run.
    ``study`` is the script's module: ``python -m simulations.report OUT`` calls its ``report(out)``. Prints
    one line before and one summary line after each run."""
    out.mkdir(parents=True, exist_ok=True)
    nodes = {name: int(flat.get(NUM_SUPERNODES, num_supernodes)) for name, flat in variants.items()}
    configs = {name: config_string({k: v for k, v in flat.items() if k not in (NUM_SUPERNODES, SEED_KEY)})
               for name, flat in variants.items()}
    _record_variants(out, study, configs, nodes, seeds)
    jobs = [(name, seed) for seed in seeds for name in configs]  # seed-major: every variant of seed 0 first
    done: dict[str, dict[int, dict]] = {}
    # One store of the frozen lower layers' output for every run of the study: runs of one seed
    # share their rows, so only the first computes those states (fedgate/hidden_store.py keys
    # them by content: the same bits either way, a run's figures do not change).
    states = Path(tempfile.mkdtemp(prefix="fedgate-study-states-"))
    try:
        for i, (name, seed) in enumerate(jobs, start=1):
            tag = f"[{i}/{len(jobs)}] {name} seed {seed}"
            config = f"{configs[name]} {SEED_KEY}={seed}".strip()
            run_dir = seed_dir(out, name, seed)
            if _already_done(run_dir, config, nodes[name]):
                print(f"{tag}: already completed in {run_dir}; reusing it", flush=True)
            else:
                if run_dir.exists():  # a run that did not complete, or of another config: start it over
                    print(f"{tag}: starting {run_dir} over", flush=True)
                    shutil.rmtree(run_dir)
                print(f"{tag}: {config}", flush=True)
                store = [] if CACHE_KEY in variants[name] else [f"{CACHE_KEY}={json.dumps(str(states))}"]
                code, run_dir = simulate([config, *store], num_supernodes=nodes[name], out=run_dir, timeout=timeout)
                if code != 0:
                    print(f"{tag}: the run failed (exit {code}); see {run_dir}", file=sys.stderr, flush=True)
                    continue
                RunDir(run_dir).write_json(STUDY_FILE, {"config": config, "num_supernodes": nodes[name]})
            r = done.setdefault(name, {})[seed] = summarize(run_dir)
            score = (f"AUC {r['auc']:.4f}, F1 {r['f1']:.4f}" if "auc" in r
                     else f"pairwise accuracy {r['pairwise_accuracy']:.4f}")
            print(f"{tag}: {score}, uplink {r['uplink_mib']:.2f} MiB, {r['wall_s']:.0f} s", flush=True)
    finally:
        shutil.rmtree(states, ignore_errors=True)
    return {name: combine_seeds(done[name]) for name in configs if name in done}


SCALES: dict[str, dict] = {
    "cpu": {},  # each study's defaults: 10-30 minutes on 2 CPU cores
    # every embedded row, more rounds and local epochs, the whole test split, bf16 on a GPU
    "gpu": {"data.limit": 0, "federation.rounds": 10, "train.epochs": 2.0, "server.eval-limit": 0,
            "train.device": "cuda", "train.bf16": True},
}


def study_parser(doc: str, variants: dict[str, dict], default_out: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--scale", choices=sorted(SCALES), default="cpu",
                   help="cpu: the small defaults; gpu: all rows, 10 rounds, 2 local epochs, bf16 on CUDA "
                        "(--set still wins)")
    p.add_argument("--variants", default=",".join(variants), help="comma-separated; choices: " + ", ".join(variants))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a shared config key")
    p.add_argument("--out", default="", help=f"results folder (default {default_out}-<time>)")
    p.add_argument("--seeds", default="0", help="comma-separated train.seed values; each variant runs once per seed "
                                                "(e.g. 0,1,2 for mean and standard error)")
    p.add_argument("--num-supernodes", type=int, default=4)
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    p.add_argument("--summarize", metavar="OUT_DIR", help="rebuild the tables and plots from finished runs")
    return p


def chosen(p: argparse.ArgumentParser, args: argparse.Namespace, variants: dict[str, dict]) -> list[str]:
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    if unknown := [v for v in names if v not in variants]:
        p.error(f"unknown variant(s) {unknown}; choose from {list(variants)}")
    return names


def chosen_seeds(p: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[int, ...]:
    try:
        seeds = tuple(dict.fromkeys(int(v) for v in args.seeds.split(",") if v.strip()))
    except ValueError:
        p.error(f"--seeds expects comma-separated integers, got {args.seeds!r}")
    if not seeds or min(seeds) < 0:
        p.error(f"--seeds expects one or more integers >= 0, got {args.seeds!r}")
    return seeds


def out_dir(args: argparse.Namespace, default_out: str) -> Path:
    return Path(args.out or f"{default_out}-{time.strftime('%Y%m%d-%H%M%S')}")



def study_main(argv: list[str] | None, *, doc: str, module: str, variants: dict[str, dict], common: dict,
               default_out: str, report: Callable[[Path], str], num_supernodes: int = 4,
               after: Callable[[Path, dict[str, dict], argparse.Namespace], None] | None = None) -> int:
    """The command line of a study script: run the chosen variants (``common`` + ``--set``
    + the variant's own keys, which win), call ``after`` (e.g. a centralized baseline), print
    the report. ``--summarize OUT`` only reports."""
    p = study_parser(doc, variants, default_out)
    p.set_defaults(num_supernodes=num_supernodes)
    args = p.parse_args(argv)
    if args.summarize:
        print(report(Path(args.summarize)))
        return 0
    names = chosen(p, args, variants)
    try:
        overrides = parse_sets(args.set)
    except ValueError as e:
        p.error(str(e))
    seeds = chosen_seeds(p, args)
    if SEED_KEY in overrides:
        p.error(f"set the seeds with --seeds, not --set {SEED_KEY}=...")
    out = out_dir(args, default_out)
    flat = {n: {**common, **SCALES[args.scale], **overrides, **variants[n]} for n in names}
    rows = run_study(out, flat, study=module, num_supernodes=args.num_supernodes, timeout=args.timeout, seeds=seeds)
    if after is not None and rows:
        after(out, flat, args)
    if not rows:
        return 1
    print(report(out))
    return 0 if len(rows) == len(names) else 1


