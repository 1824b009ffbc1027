"""The server's round loop: train, aggregate, evaluate, write the run directory.

It follows ``flwr.serverapp.strategy.Strategy.start`` (configure -> send_and_receive ->
aggregate, for train then evaluate) and adds what fedgate runs need: server-side
evaluation every k rounds, a checkpoint and a ``rounds.jsonl`` line per round, bytes and
wall times, resuming from a checkpoint, and a summary and report at the end.
"""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from fedgate.config import FedgateConfig
from fedgate.federated.evaluator import ServerEvaluator
from fedgate.rundir import (CONFIG_FILE, PREDICTIONS_FILE, SUMMARY_FILE, RunDir, default_run_dir,
                                      load_checkpoint)
from fedgate.federated.tracking import Tracker
from fedgate.memory import resident_mib
from fedgate.metrics import misaligned, misalignment_score
from fedgate.run_outputs import package_versions, write_predictions
from server.head_init import federated_head
from server.strategy import FedgateStrategy

log = logging.getLogger(__name__)
progress = logging.getLogger("fedgate.progress")  # one line per round: what the launcher shows


def round_line(record: dict, total: int) -> str:
    """``round 2/3 | test AUC 0.7012 | loss 0.3210 | up 1.2 MiB | down 1.2 MiB | 45.3 s | clients 4 ok, 0 failed``"""
    s, t, b = record.get("server_eval") or {}, record.get("train") or {}, record.get("bytes") or {}
    lost = len(record.get("failures", [])) + len(record.get("dropped", [])) + len(record.get("rejected", []))
    parts = [f"round {record['round']}/{total}",
             f"test pairwise accuracy {s['pairwise_accuracy']:.4f}" if "pairwise_accuracy" in s and "auc" not in s
             else f"test AUC {s['auc']:.4f}" if "auc" in s else "test AUC -"]
    if (val := validation_score(s)) is not None:
        parts.append(f"validation {val:.4f}")
    parts.append(f"loss {t['train-loss']:.4f}" if "train-loss" in t else "loss -")
    if "up" in b:
        parts += [f"up {b['up'] / 2**20:.2f} MiB", f"down {b['down'] / 2**20:.2f} MiB"]
    if "wall_s" in record:
        parts.append(f"{record['wall_s']['round']:.1f} s")
    if "clients" in record:
        parts.append(f"clients {len(record['clients'])} ok, {lost} failed")
    if "privacy" in record:
        p = record["privacy"]
        parts.append(f"{p['mode']} DP epsilon {p['epsilon']:.2f} (delta {p['delta']:g})")
    return " | ".join(parts)


def _eval_due(cfg: FedgateConfig, server_round: int) -> bool:
    every, last = cfg.server.eval_every, cfg.federation.rounds
    return server_round == last or (every > 0 and server_round % every == 0)


def _refit_due(cfg: FedgateConfig, server_round: int) -> bool:
    """Whether the federated ridge head is refitted after this round (federation.head-refit)."""
    mode = cfg.federation.head_refit
    return mode == "every-round" or (mode == "final" and server_round == cfg.federation.rounds)


def _noise_due(cfg: FedgateConfig, server_round: int) -> bool:
    """Semantic-noise AUCs: before training, after the last round, every ``server.noise-every``."""
    every = cfg.server.noise_every
    return server_round in (0, cfg.federation.rounds) or (every > 0 and server_round % every == 0)


def _open_run(cfg: FedgateConfig) -> tuple[RunDir, int, dict | None, dict, tuple[dict, dict] | None]:
    """(run directory, first round to run, checkpoint state or None, gate profile, the
    strategy's saved (arrays, metadata) or None)."""
    if not cfg.server.resume_from:
        return RunDir(cfg.server.output_dir or default_run_dir()), 1, None, {}, None
    run, done, state, meta = load_checkpoint(cfg.server.resume_from)
    if cfg.server.output_dir and Path(cfg.server.output_dir).resolve() != run.path:
        log.warning("resuming writes into the resumed run %s, not server.output-dir=%s", run.path,
                    cfg.server.output_dir)
    old = meta.get("config", {})
    changed = sorted(k for k, v in cfg.to_flat().items()
                     if old.get(k) != v and not k.startswith(("server.", "federation.rounds")))
    if changed:
        log.warning("resuming %s with a changed config: %s", run.path, changed)
    run.keep_rounds_through(done)
    log.info("resuming %s after round %d", run.path, done)
    saved = (run.server_arrays(done), meta.get("strategy", {}))
    return run, done + 1, state, meta.get("gate_profile", {}), saved


def run_federation(grid: Grid, cfg: FedgateConfig, *, run_id: int | None = None) -> RunDir:
    """Run rounds until ``federation.rounds``; returns the run directory."""
    run, first, state, profile, saved = _open_run(cfg)
    log.info("run directory: %s", run.path)
    t_start = time.perf_counter()
    run.write_json(CONFIG_FILE, {"config": cfg.to_flat(), "versions": package_versions(), "flower_run_id": run_id,
                                 "start_round": first})
    tracker = Tracker(run.path, tensorboard=cfg.server.tensorboard, mlflow=cfg.server.mlflow, config=cfg.to_flat())
    try:
        evaluator = ServerEvaluator(cfg)
        params = {"trainable": evaluator.trainable_params, "backbone": evaluator.backbone_params,
                  "percent": 100.0 * evaluator.trainable_params / max(1, evaluator.backbone_params),
                  "backbone_bytes": evaluator.backbone_bytes}
        fresh = state is None
        strategy = FedgateStrategy(cfg, evaluator.initial_state() if fresh else state, profile, saved,
                                   scorer=evaluator.validation_auc)
        strategy.summary()
        if fresh:  # round 0: the starting point, with the federated ridge head when configured
            record = {"round": 0, "params": params}
            if cfg.server.baselines:  # at the initial adapters (B = 0): the frozen features
                record["baselines"] = evaluator.baselines(strategy.global_state)
            if cfg.train.head_init == "ridge":
                record["head_init"] = federated_head(grid, strategy, evaluator)
            record["server_eval"], _ = evaluator.evaluate(strategy.global_state, noise=_noise_due(cfg, 0))
            run.append_round(record)
            tracker.round(record)
            _checkpoint(run, cfg, strategy, 0, record["server_eval"])  # the start can be the best round
            head = record.get("head_init") or {}
            progress.info(round_line(record, cfg.federation.rounds) + (
                f" | federated ridge head from {head['clients']} clients" if head.get("fitted") else ""))
        final_metrics, final_pred, idle = None, None, 0
        for rnd in range(first, cfg.federation.rounds + 1):
            record, final_metrics, final_pred = _one_round(grid, cfg, strategy, evaluator, rnd, params)
            run.append_round(record)
            tracker.round(record)
            idle = 0 if record["aggregated"] or cfg.federation.fraction_train == 0 else idle + 1
            _check_progress(cfg, run, rnd, idle)
            _checkpoint(run, cfg, strategy, rnd, final_metrics)
        if final_pred is not None:
            write_predictions(run.path / PREDICTIONS_FILE, evaluator.splits["test"], final_pred)
            tracker.final_roc(misaligned(evaluator.splits["test"].labels[:, 0].numpy(), cfg.data.misaligned_threshold),
                              misalignment_score(final_pred), cfg.federation.rounds)
        tracker.close()
        summary = _summary(run, cfg, params, time.perf_counter() - t_start, status="completed")
        run.write_json(SUMMARY_FILE, summary)
        final, base = summary["final"], summary.get("baselines") or {}
        headline = (f"pairwise accuracy {final['pairwise_accuracy']:.4f}" if "auc" not in final and
                    "pairwise_accuracy" in final else
                    f"test AUC {final.get('auc', float('nan')):.4f}, F1 {final.get('f1', float('nan')):.4f}")
        best = summary.get("best_by_validation")
        if best and best["round"] != summary["rounds_completed"]:
            headline += f" (best on validation: round {best['round']}, {_score_text(best)})"
        progress.info("finished: %s%s | run directory %s", headline,
                      "".join(f" | {k} {v:.4f}" for k, v in base.items()
                              if not k.endswith(("_C", "_lr", "_longer_wins"))), run.path)
    except BaseException as e:
        tracker.close(failed=True)
        run.write_json(SUMMARY_FILE, {"status": "failed", "error": f"{type(e).__name__}: {e}",
                                      "traceback": traceback.format_exc(), "rounds_completed": _last_round(run)})
        raise
    if cfg.server.report:
        from fedgate.federated.report import write_report

        write_report(run.path)
    return run


def _checkpoint(run: RunDir, cfg: FedgateConfig, strategy: FedgateStrategy, rnd: int,
                metrics: dict | None) -> None:
    """The global state after round ``rnd`` (0: the start) with what resuming and
    ``fedgate evaluate RUN --round N`` need."""
    server_arrays, strategy_meta = strategy.saved()
    meta = {"config": cfg.to_flat(), "gate_profile": strategy.profile, "strategy": strategy_meta}
    if metrics is not None and "decision_threshold" in metrics:  # rated rows, not pairs:
        # lets `fedgate evaluate CHECKPOINT` report F1 at the server's cut
        meta["decision_threshold"] = metrics["decision_threshold"]
    run.save_checkpoint(rnd, strategy.global_state, meta, server_arrays)


def _score_text(server_eval: dict) -> str:
    if "auc" in server_eval:
        return f"test AUC {server_eval['auc']:.4f}"
    return f"pairwise accuracy {server_eval.get('pairwise_accuracy', float('nan')):.4f}"


def validation_score(server_eval: dict) -> float | None:
    """The validation figure that picks the best round (``ServerEvaluator.evaluate``)."""
    value = server_eval.get("validation_auc", server_eval.get("validation_pairwise_accuracy"))
    return None if value is None or not np.isfinite(value) else float(value)


def best_by_validation(rounds: list[dict]) -> dict | None:
    """``{"round": k, **server_eval}`` of the evaluated round (0 = the start) with the best
    validation score, the earliest of ties; None when no round has one. Picked on the
    validation rows only, so its test figures are an honest held-out result."""
    scored = [r for r in rounds if r.get("server_eval") and validation_score(r["server_eval"]) is not None]
    if not scored:
        return None
    best = max(scored, key=lambda r: (validation_score(r["server_eval"]), -r["round"]))
    return {"round": best["round"], **best["server_eval"]}


def _one_round(grid: Grid, cfg: FedgateConfig, strategy: FedgateStrategy, evaluator: ServerEvaluator,
               rnd: int, params: dict) -> tuple[dict, dict | None, np.ndarray | None]:
    total = cfg.federation.rounds
    timeout = cfg.federation.round_timeout
    t0 = time.perf_counter()
    # the strategy sends each node its own view of the global state; Flower's arrays argument stays empty
    replies = grid.send_and_receive(strategy.configure_train(rnd, ArrayRecord(),
                                                             ConfigRecord(), grid), timeout=timeout)
    _, train_metrics = strategy.aggregate_train(rnd, replies)
    refit = None
    if train_metrics is not None and _refit_due(cfg, rnd):  # the averaged head out, the pooled-rows ridge fit in
        refit = federated_head(grid, strategy, evaluator, rnd)
    t1 = time.perf_counter()
    replies = grid.send_and_receive(strategy.configure_evaluate(rnd, ArrayRecord(),
                                                                ConfigRecord(), grid), timeout=timeout)
    fed_eval = strategy.aggregate_evaluate(rnd, replies)
    t2 = time.perf_counter()
    server_eval, pred = None, None
    if _eval_due(cfg, rnd):
        server_eval, pred = evaluator.evaluate(strategy.global_state, pruned=strategy.pruned,
                                               noise=_noise_due(cfg, rnd))
    t3 = time.perf_counter()
    rl = strategy.round_log
    n_train = max(1, len(rl.clients))
    refit_down, refit_up = (refit["bytes_down"], refit["bytes_up"]) if refit else (0, 0)
    up_per_client = (rl.array_bytes_up + refit_up) / n_train
    record = {
        "round": rnd,
        "train": dict(train_metrics) if train_metrics is not None else None,
        "sampled": rl.train_nodes,
        "aggregated": train_metrics is not None,
        "clients": rl.clients,
        "failures": rl.failures,
        "dropped": rl.dropped,
        "rejected": rl.rejected,
        "federated_eval": dict(fed_eval) if fed_eval is not None else None,
        "eval_clients": rl.eval_clients,
        "server_eval": server_eval,
        # a head refit's queries and statistics count as this round's traffic
        "bytes": {"down": rl.bytes_down + refit_down, "up": rl.bytes_up + refit_up,
                  "array_down": rl.array_bytes_down + refit_down,
                  "array_up": rl.array_bytes_up + refit_up,
                  "array_up_per_client": up_per_client,
                  "up_per_client_over_backbone": up_per_client / max(1, params["backbone_bytes"])},
        "gates": strategy.profile,
        "strategy": {"name": cfg.federation.strategy, "pruned": strategy.pruned, **rl.rule},
        "wall_s": {"train": t1 - t0, "federated_eval": t2 - t1, "server_eval": t3 - t2, "round": t3 - t0},
        "finished_at": time.time(),
        "server_rss_mib": resident_mib(),
    }
    if refit is not None:
        record["head_refit"] = refit
    if rl.skipped:
        record["skipped"] = rl.skipped
    if rl.privacy is not None:
        record["privacy"] = rl.privacy
    progress.info(round_line(record, total))
    return record, server_eval, pred


class NoProgressError(RuntimeError):
    """The federation stopped producing updates: every sampled node failed, timed out or
    was rejected for ``federation.max-idle-rounds`` rounds in a row (or in every round)."""


def _check_progress(cfg: FedgateConfig, run: RunDir, rnd: int, idle: int) -> None:
    """Raise when the run would go on (or end) without any client update behind it: its
    final figures would be those of the initial model and must not pass for a result."""
    limit = cfg.federation.max_idle_rounds
    trained = [r for r in run.rounds() if r.get("round", 0) > 0]
    if (limit and idle >= limit) or (rnd == cfg.federation.rounds and cfg.federation.fraction_train > 0
                                     and not any(r.get("aggregated", True) for r in trained)):
        last = trained[-1]
        reasons = sorted({f"node {x['node_id']}: {(x['reason'].strip().splitlines() or ['?'])[-1]}"
                          for x in last.get("failures", []) + last.get("dropped", []) + last.get("rejected", [])})
        raise NoProgressError(f"no usable client update in {idle} round(s) in a row, through round {rnd} "
                              f"(federation.max-idle-rounds={limit}); last round: "
                              f"{last.get('skipped', 'no node was sampled')}; " + "; ".join(reasons[:5]))


def _last_round(run: RunDir) -> int:
    try:
        return max((r.get("round", 0) for r in run.rounds()), default=0)
    except ValueError:
        return 0


def _summary(run: RunDir, cfg: FedgateConfig, params: dict, wall_s: float, *, status: str) -> dict:
    rounds = run.rounds()
    evaluated = [r for r in rounds if r.get("server_eval")]
    baselines = next((r["baselines"] for r in rounds if r.get("round") == 0 and "baselines" in r), None)
    trained = [r for r in rounds if r.get("round", 0) > 0]
    return {
        "status": status,
        "rounds_completed": _last_round(run),
        "final": evaluated[-1]["server_eval"] if evaluated else {},
        "initial": evaluated[0]["server_eval"] if evaluated and evaluated[0]["round"] == 0 else {},
        **({"best_by_validation": best} if (best := best_by_validation(evaluated)) else {}),
        "params": params,
        "bytes": {"down": sum(r["bytes"]["down"] for r in trained), "up": sum(r["bytes"]["up"] for r in trained)},
        "wall_s": wall_s,
        "run_dir": str(run.path),
        "strategy": cfg.federation.strategy,
        **({"baselines": baselines} if baselines is not None else {}),
    }
