"""A run directory's Markdown report and plots, rebuilt from its files alone.

    plots/metrics.png   server ROC-AUC / F1 / noisy AUC and clients' mean / worst AUC per round
    plots/roc.png       the final global model's ROC curve on the test split
    plots/gates.png     mean token gate and structural gate per adapter (rows) and round (columns)
    report.md           the round table and those plots
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Collection

import numpy as np

from fedgate.config.renamed import migrate
from fedgate.rundir import CONFIG_FILE, PREDICTIONS_FILE, SUMMARY_FILE, RunDir
from fedgate.metrics import misaligned, roc_auc, roc_curve

log = logging.getLogger(__name__)


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _series(rounds: list[dict], section: str, key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in rounds:
        v = (r.get(section) or {}).get(key)
        if v is not None:
            xs.append(r["round"])
            ys.append(v)
    return xs, ys


def line_plot(path: Path, series: dict[str, tuple[list, list]], *, ylabel: str, title: str = "",
              dashed: Collection[str] = (), size: tuple[float, float] = (6.4, 4.0)) -> None:
    """One line per ``{label: (rounds, values)}`` against the round number, saved as PNG."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=size)
    for label, (xs, ys) in series.items():
        if xs:
            ax.plot(xs, ys, marker="o", label=label, linestyle="--" if label in dashed else "-")
    ax.set_xlabel("round")
    ax.xaxis.get_major_locator().set_params(integer=True)  # rounds, not 0.5 steps
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def headline_metric(rounds: list[dict]) -> tuple[str, str]:
    """(key, name) of what a run is judged by: ROC-AUC, or pairwise accuracy on preference pairs."""
    evals = [r.get("server_eval") or {} for r in rounds]
    if any("pairwise_accuracy" in s for s in evals) and not any("auc" in s for s in evals):
        return "pairwise_accuracy", "pairwise accuracy"
    return "auc", "AUC"


def plot_metrics(rounds: list[dict], path: Path) -> None:
    """The server's headline metric (with F1 for labelled rows), its noisy copies and the
    clients' mean and worst per round; the clients' lines dashed."""
    if headline_metric(rounds)[0] == "pairwise_accuracy":
        metric, name, client_name = "pairwise_accuracy", "pairwise accuracy", "pairwise accuracy"
        keys = [("server_eval", metric, "server pairwise accuracy")]
    else:
        metric, name, client_name = "auc", "ROC-AUC", "AUC"
        keys = [("server_eval", "auc", "server ROC-AUC"), ("server_eval", "f1", "server F1")]
    prefix = f"{metric}_noise_"
    noise = sorted({k for r in rounds for k in (r.get("server_eval") or {}) if k.startswith(prefix)})
    keys += [("server_eval", k, f"{name}, noise {k.removeprefix(prefix)}") for k in noise]
    keys += [("federated_eval", f"{metric}-mean", f"clients' mean {client_name}"),
             ("federated_eval", f"{metric}-worst", f"worst client {client_name}")]
    line_plot(path, {label: _series(rounds, section, key) for section, key, label in keys}, ylabel="metric",
              dashed=[label for section, _, label in keys if section == "federated_eval"])


def prediction_file_score(rows: list[dict]) -> np.ndarray:
    """The misalignment score of test_predictions.csv rows: minus the alignment logit, or
    minus predicted helpfulness in files without that column."""
    key = "alignment_logit" if rows and "alignment_logit" in rows[0] else "pred_helpfulness"
    return -np.array([float(r[key]) for r in rows])


def plot_roc(pred_csv: Path, threshold: int, path: Path) -> float:
    with pred_csv.open() as f:
        rows = list(csv.DictReader(f))
    y = misaligned(np.array([int(r["true_helpfulness"]) for r in rows]), threshold)
    score = prediction_file_score(rows)
    fpr, tpr = roc_curve(y, score)
    auc = roc_auc(y, score)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    ax.plot(fpr, tpr, label=f"global model (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate (misaligned caught)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return auc


def _short(name: str) -> str:
    """``backbone.encoder.layer.4.attention.self.query`` -> ``4.attention.self.query``."""
    parts = name.split(".")
    for i, p in enumerate(parts):
        if p.isdigit():
            return ".".join(parts[i:])
    return name


def plot_gates(rounds: list[dict], path: Path) -> bool:
    gated = [r for r in rounds if r.get("gates")]
    if not gated:
        return False
    modules = sorted({m for r in gated for m in r["gates"]})
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 0.25 * len(modules) + 1.8), sharey=True)
    for ax, key, title in zip(axes, ("token_gate", "structural_gate"), ("mean token gate", "structural gate")):
        grid = np.array([[r["gates"].get(m, {}).get(key, np.nan) for r in gated] for m in modules], dtype=float)
        im = ax.imshow(grid, aspect="auto", vmin=0.0, vmax=1.0, cmap="viridis")
        ax.set_xticks(range(len(gated)), [str(r["round"]) for r in gated])
        ax.set_xlabel("round")
        ax.set_title(title, fontsize=9)
    axes[0].set_yticks(range(len(modules)), [_short(m) for m in modules], fontsize=7)
    fig.colorbar(im, ax=axes, fraction=0.03)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True


def _fmt(v, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


def round_table(rounds: list[dict]) -> str:
    key, name = headline_metric(rounds)
    lines = [f"| round | test {name} | F1 | clients' mean / worst {name} | clients | up KiB / client | down KiB "
             "| wall s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rounds:
        s, fe, b = r.get("server_eval") or {}, r.get("federated_eval") or {}, r.get("bytes") or {}
        fed = f"{_fmt(fe.get(f'{key}-mean'))} / {_fmt(fe.get(f'{key}-worst'))}" if fe else "-"
        lines.append(
            f"| {r['round']} | {_fmt(s.get(key))} | {_fmt(s.get('f1'))} | {fed} | {len(r.get('clients', []))} | "
            f"{_fmt(b.get('array_up_per_client', 0) / 1024 if b else None, '.1f')} | "
            f"{_fmt(b.get('down', 0) / 1024 if b else None, '.1f')} | {_fmt((r.get('wall_s') or {}).get('round'), '.1f')} |")
    return "\n".join(lines)


def write_report(run_dir: str | Path) -> Path:
    """Write report.md and plots/ for a run directory; returns the report's path."""
    run = RunDir(run_dir)
    rounds = run.rounds()
    if not rounds:
        raise FileNotFoundError(f"{run.path}: no rounds.jsonl records to report on")
    config = migrate(run.read_json(CONFIG_FILE)["config"])
    try:
        summary = run.read_json(SUMMARY_FILE)
    except FileNotFoundError:
        summary = {"status": "unknown (no summary.json)"}
    plots = run.path / "plots"
    plots.mkdir(exist_ok=True)
    plot_metrics(rounds, plots / "metrics.png")
    parts = [f"# Federated run {run.path.name}", "",
             f"Status: **{summary.get('status')}**; rounds completed: {summary.get('rounds_completed', '-')}; "
             f"strategy `{config.get('federation.strategy')}`; backbone `{config.get('model.backbone')}`; "
             f"partitioner `{config.get('shards.partitioner')}` (alpha {config.get('shards.alpha')}).", ""]
    params = summary.get("params") or next((r["params"] for r in rounds if "params" in r), None)
    if params:
        parts += [f"Trainable parameters: {params['trainable']:,} ({params['percent']:.2f}% of the backbone's "
                  f"{params['backbone']:,}).", ""]
    parts += ["## Rounds", "", round_table(rounds), "", "![metrics per round](plots/metrics.png)", ""]
    if private := [(r["round"], r["privacy"]) for r in rounds if r.get("privacy")]:
        p = private[-1][1]
        parts += ["## Privacy", "", f"Client-level {p['mode']} differential privacy: updates clipped to L2 norm "
                  f"{p['clip_norm']:g}, noise multiplier {p['noise_multiplier']:.4g}, sampling rate "
                  f"{p['sample_rate']:g}. Epsilon at delta {p['delta']:g} after each private round: "
                  + ", ".join(f"round {n} {q['epsilon']:.3f}" for n, q in private) + ".", ""]
    baselines = summary.get("baselines")
    key, name = headline_metric(rounds)
    if baselines:
        final = (summary.get("final") or {}).get(key)
        parts += ["## Cheap baselines (pooled training rows, same test rows)", "",
                  f"| method | test {name} |", "|---|---|", f"| federated model (final) | {_fmt(final)} |",
                  *(f"| {k} | {_fmt(v)} |" for k, v in baselines.items()
                    if not k.endswith(("_C", "_lr", "_longer_wins"))), ""]
    if key == "auc" and (run.path / PREDICTIONS_FILE).is_file():
        auc = plot_roc(run.path / PREDICTIONS_FILE, int(config.get("data.misaligned-threshold", 2)),
                       plots / "roc.png")
        parts += ["## Final ROC curve (test split)", "", f"ROC-AUC {auc:.4f}.", "", "![ROC](plots/roc.png)", ""]
    if plot_gates(rounds, plots / "gates.png"):
        parts += ["## Gates", "", "Per adapter (rows) and round (columns), averaged over the round's clients.",
                  "", "![gates](plots/gates.png)", ""]
    path = run.path / "report.md"
    path.write_text("\n".join(parts))
    log.info("report: %s", path)
    return path


def bar_plot(path: Path, values: dict[str, float], *, ylabel: str, title: str = "",
             reference: tuple[str, float] | None = None, size: tuple[float, float] = (7, 4.0)) -> None:
    """One bar per ``{label: value}`` (in order), optionally a dashed horizontal reference line
    such as an upper bound, saved as PNG."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=size)
    labels = list(values)
    ax.bar(range(len(labels)), [values[k] for k in labels], color="tab:blue")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    finite = [v for v in values.values() if v == v]
    if reference is not None:
        ax.axhline(reference[1], color="tab:red", linestyle="--", label=reference[0])
        finite.append(reference[1])
        ax.legend(fontsize=8)
    if finite:  # zoom on the differences: AUCs of a study sit close together
        lo, hi = min(finite), max(finite)
        pad = max(0.01, 0.15 * (hi - lo))
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def scatter_plot(path: Path, points: dict[str, tuple[float, float]], *, xlabel: str, ylabel: str, title: str = "",
                 size: tuple[float, float] = (6, 4.0)) -> None:
    """One labelled point per ``{label: (x, y)}``, e.g. accuracy against trainable-parameter
    percent as PEFT comparison tables plot it; saved as PNG."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=size)
    for label, (x, y) in points.items():
        ax.scatter([x], [y], s=30)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
