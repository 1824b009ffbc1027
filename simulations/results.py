"""Reading a study's finished runs back into rows and writing its tables: one row per
variant (seeds combined: mean, standard error, the per-seed rows), paired differences to a
baseline with their standard error and whether they resolve (>= 2 SE), and the
``results`` / ``per_round`` tables and plots (simulations/study.py runs the studies).

Over several seeds a difference to the baseline is the mean of the per-seed differences with
their standard error; with one seed its standard error is a paired bootstrap over the shared
test rows instead.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Callable

from fedgate.rundir import PREDICTIONS_FILE, SUMMARY_FILE, RunDir

log = logging.getLogger(__name__)

VARIANTS_FILE = "variants.json"
STUDY_FILE = "study.json"  # in the results folder: which script; in each run directory: its config
RESOLVED_AT = 2.0  # a difference counts as resolved when it is at least this many standard errors
HEADLINES = ("auc", "pairwise_accuracy")  # what a run is judged by: rated rows, preference pairs
STANDARD_COLUMNS = {"variant": "variant", "seeds": "seeds", "auc": "final ROC-AUC", "auc_se": "its SE",
                    "vs_baseline": "vs baseline (points)", "se": "SE of the difference (points)",
                    "resolved": "resolved (>= 2 SE)", "f1": "F1", "trainable_percent": "trainable %",
                    "uplink_mib": "uplink MiB", "wall_s": "wall s", "lost_updates": "lost client updates"}


def seed_dir(out: Path, name: str, seed: int) -> Path:
    """Where variant ``name``'s run of ``seed`` lives."""
    return out / name / f"seed-{seed}"


def seed_dirs(out: Path, name: str) -> dict[int, Path]:
    """The seeds of variant ``name`` whose run directory holds a summary, by seed."""
    dirs = {}
    for d in sorted((out / name).glob("seed-*")):
        if d.name.removeprefix("seed-").isdigit() and (d / SUMMARY_FILE).is_file():
            dirs[int(d.name.removeprefix("seed-"))] = d
    return dict(sorted(dirs.items()))


def mean_and_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for a single value)."""
    import numpy as np

    v = np.asarray(values, dtype=float)
    return float(v.mean()), (float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0)


def combine_seeds(per_seed: dict[int, dict]) -> dict:
    """One row from the rows of several seeds: numbers averaged, number lists that differ
    between seeds (AUC per round) averaged element-wise where their lengths agree, anything
    else (lists the seeds share, such as which partitions were flipped; text) taken from the
    first seed; plus ``seeds`` (how many), ``auc_se`` and ``per_seed``."""
    import numpy as np

    rows = list(per_seed.values())
    first = rows[0]
    out: dict = {}
    for key, value in first.items():
        values = [r.get(key) for r in rows]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            out[key] = float(np.mean(values))
        elif (all(isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v) for v in values)
              and len({len(v) for v in values}) == 1 and any(v != value for v in values)):
            out[key] = np.mean(np.asarray(values, dtype=float), axis=0).tolist()
        else:
            out[key] = value
    out["seeds"] = len(rows)
    for key in HEADLINES:  # the SE over seeds of whichever headline figure the rows carry
        if all(key in r for r in rows):
            out[f"{key}_se"] = mean_and_se([r[key] for r in rows])[1]
    out["per_seed"] = per_seed
    return out


def summarize_run(run_dir: Path) -> dict:
    """One finished run as a row: final and per-round server metrics, uplink, wall time."""
    run = RunDir(run_dir)
    summary = run.read_json(SUMMARY_FILE)
    if summary.get("status") != "completed":
        raise RuntimeError(f"{run_dir}: the run did not complete ({summary.get('error', 'no error recorded')})")
    rounds = run.rounds()
    trained = [r for r in rounds if r["round"] > 0]
    evaluated = [r for r in rounds if r.get("server_eval")]
    final = evaluated[-1]["server_eval"]
    return {
        "auc": final["auc"], "f1": final["f1"],
        **{k: v for k, v in final.items() if k.startswith("auc_noise_")},
        "uplink_mib": sum(r["bytes"]["array_up"] for r in trained) / 2**20,
        "uplink_wire_mib": sum(r["bytes"]["up"] for r in trained) / 2**20,
        "wall_s": summary["wall_s"],
        "pruned": len(trained[-1].get("strategy", {}).get("pruned", [])) if trained else 0,
        "auc_per_round": [r["server_eval"]["auc"] for r in evaluated],
        "evaluated_rounds": [r["round"] for r in evaluated],
        "trainable_percent": rounds[0]["params"]["percent"],
        # client updates that never arrived: the ClientApp raised, the node went offline, or it was too slow
        "lost_updates": sum(len(r.get("failures", [])) + len(r.get("dropped", [])) for r in trained),
    }


def rows_from_dir(out: Path, summarize: Callable[[Path], dict] = summarize_run) -> dict[str, dict]:
    """The rows of a finished (or partly finished) study, in ``variants.json`` order; each
    combines the variant's completed seeds (:func:`combine_seeds`)."""
    names = json.loads((out / VARIANTS_FILE).read_text())
    rows = {}
    for n in names:
        per_seed = {}
        for seed, d in seed_dirs(out, n).items():
            try:
                per_seed[seed] = summarize(d)
            except RuntimeError as e:  # a run that failed: left out of the row, said once
                log.warning("%s", e)
        if per_seed:
            rows[n] = combine_seeds(per_seed)
    return rows


def paired_difference(out: Path, rows: dict[str, dict], name: str, baseline: str,
                      key: str = "auc") -> tuple[float, float, str]:
    """``key(name) - key(baseline)`` in points (``key``: the final ROC-AUC, or a figure such
    as ``auc_noise_0.2``) with its standard error and how that was had: over two or more
    shared seeds, the mean and SE of the per-seed differences (``"seeds"``); over one shared
    seed, a paired bootstrap over the test rows (``"bootstrap"``, clean AUC only); ``nan``
    where neither applies."""
    a, b = rows[name].get("per_seed", {}), rows[baseline].get("per_seed", {})
    shared = sorted(s for s in set(a) & set(b) if key in a[s] and key in b[s])
    if len(shared) >= 2:
        mean, se = mean_and_se([100 * (a[s][key] - b[s][key]) for s in shared])
        return mean, se, "seeds"
    if shared:
        s = shared[0]
        diff = 100 * (a[s][key] - b[s][key])
        da, db = seed_dir(out, name, s), seed_dir(out, baseline, s)
        if key == "auc" and all((d / PREDICTIONS_FILE).is_file() for d in (da, db)):
            try:
                return diff, auc_difference_se(da, db), "bootstrap"
            except ValueError as e:  # scored on other rows: no paired SE, say why
                log.warning("%s", e)
        return diff, float("nan"), ""
    return 100 * (rows[name][key] - rows[baseline][key]), float("nan"), ""


def resolved(diff: float, se: float) -> str:
    """``yes`` when ``|diff| >= 2 SE``, ``no`` when not, empty without an SE."""
    import math

    if math.isnan(se):
        return ""
    return "yes" if abs(diff) >= RESOLVED_AT * se and diff != 0 else "no"


def contrast_cells(diff: float, se: float) -> tuple[str, str, str]:
    """A paired difference as table cells: ``(+1.23, 0.45, yes)``; the SE and the verdict
    empty where there is no SE."""
    return f"{diff:+.2f}", "" if se != se else f"{se:.2f}", resolved(diff, se)


def write_table(out: Path, table: list[dict], columns: dict[str, str], name: str = "results") -> str:
    """``name.csv`` (every key) and ``name.md`` (``columns``: key -> header, floats to 4
    places); returns the markdown."""
    fields = list(dict.fromkeys(k for row in table for k in row))
    with (out / f"{name}.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(table)

    def cell(v) -> str:
        return (f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}") if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(k, "")) for k in columns) + " |" for row in table]
    md = "\n".join(lines) + "\n"
    (out / f"{name}.md").write_text(md)
    return md


def report_study(out: Path) -> str:
    """Tables and plots of a study's results folder again, from its run directories, by the
    script that made it (``study.json``); returns the markdown it wrote."""
    import importlib

    meta = out / STUDY_FILE
    if not meta.is_file():
        raise FileNotFoundError(f"{out}: no {STUDY_FILE}; not a results folder written by a simulations/ study script")
    name = json.loads(meta.read_text())["study"]
    return importlib.import_module(name).report(out)


def per_round_table(out: Path, rows: dict[str, dict]) -> str:
    """``per_round.csv`` / ``per_round.md``: the server's test ROC-AUC after every round
    (round 0: before training) of every variant and seed."""
    table, rounds = [], set()
    for name, r in rows.items():
        for seed, one in r.get("per_seed", {}).items():
            aucs = one.get("auc_per_round", [])
            numbers = one.get("evaluated_rounds", range(len(aucs)))
            table.append({"variant": name, "seed": seed, **{f"round_{n}": auc for n, auc in zip(numbers, aucs)}})
            rounds.update(numbers)
    columns = {"variant": "variant", "seed": "seed",
               **{f"round_{n}": "round 0" if n == 0 else str(n) for n in sorted(rounds)}}
    return write_table(out, table, columns, name="per_round")


def standard_results(out: Path, rows: dict[str, dict], *, baseline: str | None = None, title: str = "",
                     reference: tuple[str, float] | None = None, extra: dict[str, str] | None = None) -> str:
    """The table most studies need (``results.csv`` / ``results.md``: final ROC-AUC (mean
    over seeds and its SE), its difference to ``baseline`` in points with the SE of that
    difference (:func:`paired_difference`) and whether it is resolved, F1, noisy-input AUCs,
    trainable share, uplink, wall time, plus ``extra`` columns already in the rows), the AUC
    after every round of every seed (:func:`per_round_table`) and two plots: final AUC per
    variant (``final_auc.png``, with ``reference`` such as the centralized upper bound as a
    dashed line) and AUC per round (``auc_per_round.png``)."""
    from fedgate.federated.report import bar_plot, line_plot

    base = rows.get(baseline) if baseline else None
    noise = sorted({k for r in rows.values() for k in r if k.startswith("auc_noise_")})
    table = []
    for name, r in rows.items():
        row = {"variant": name, "seeds": r.get("seeds", 1), "auc": r["auc"],
               "auc_se": r.get("auc_se", 0.0) if r.get("seeds", 1) > 1 else "",
               "f1": r["f1"], **{k: r.get(k, float("nan")) for k in noise},
               "trainable_percent": f"{r['trainable_percent']:.3f}", "uplink_mib": f"{r['uplink_mib']:.2f}",
               "wall_s": f"{r['wall_s']:.0f}", "lost_updates": r.get("lost_updates", 0)}
        if base and name != baseline:
            diff, se, _ = paired_difference(out, rows, name, baseline)
            row.update(zip(("vs_baseline", "se", "resolved"), contrast_cells(diff, se)))
        row.update({k: r[k] for k in (extra or {}) if k in r})
        table.append(row)
    columns = dict(STANDARD_COLUMNS)
    if not base:
        for k in ("vs_baseline", "se", "resolved"):
            columns.pop(k)
    else:
        columns["vs_baseline"] = f"vs {baseline} (points)"
    if not any(r.get("seeds", 1) > 1 for r in rows.values()):
        columns.pop("auc_se")
    if not any(r.get("lost_updates") for r in rows.values()):  # the column only when a client failed
        columns.pop("lost_updates")
    for k in noise:
        columns[k] = f"AUC, {float(k.removeprefix('auc_noise_')):.0%} noise"
    columns.update(extra or {})
    md = write_table(out, table, columns)
    per_round_table(out, rows)
    bar_plot(out / "final_auc.png", {n: r["auc"] for n, r in rows.items()}, ylabel="final server test ROC-AUC",
             title=title, reference=reference)
    line_plot(out / "auc_per_round.png",
              {n: (list(range(len(r["auc_per_round"]))), r["auc_per_round"]) for n, r in rows.items()},
              ylabel="server test ROC-AUC (mean over seeds)", title=title, dashed=[baseline] if baseline else (),
              size=(7, 4.5))
    return md


def auc_difference_se(run_a: Path, run_b: Path, threshold: int = 2, resamples: int = 1000, seed: int = 0) -> float:
    """Standard error, in ROC-AUC points, of ``AUC(a) - AUC(b)`` over the same test rows: a
    paired bootstrap over the rows of both runs' ``test_predictions.csv``. What a difference
    between two runs of a study has to exceed before it says anything."""
    import numpy as np

    from fedgate.federated.report import prediction_file_score
    from fedgate.metrics import roc_auc

    def load(run: Path) -> tuple[np.ndarray, np.ndarray]:
        with (run / "test_predictions.csv").open() as f:
            rows = list(csv.DictReader(f))
        y = np.array([int(r["true_helpfulness"]) <= threshold for r in rows])
        return y, prediction_file_score(rows)

    (y, a), (y_b, b) = load(run_a), load(run_b)
    if len(y) != len(y_b) or (y != y_b).any():
        raise ValueError(f"{run_a} and {run_b} were not scored on the same test rows")
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(resamples):
        i = rng.integers(0, len(y), len(y))
        if y[i].all() or not y[i].any():
            continue
        diffs.append(roc_auc(y[i], a[i]) - roc_auc(y[i], b[i]))
    return 100 * float(np.std(diffs))
