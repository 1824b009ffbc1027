"""One client trained by several processes (``engine.world-size`` = N > 1): the launcher and
the rank entry point.

The ClientApp process is never a rank itself: a simulation actor may already hold a world-1
process group (fedgate/engine.py), and a hung rank must not take the actor down with it.
:func:`run_ranks` writes a job directory, starts N processes with
``python -m fedgate.federated.ranks JOB_DIR`` and waits for them:

- ``in/job.json`` (the raw run and node config, round, prior, deadline, launcher pid) and
  ``in/global.safetensors`` / ``in/personal.safetensors``: what every rank reads itself, so
  nothing needs broadcasting. JSON and safetensors only: nothing is unpickled.
- The ranks meet through a ``torch.distributed.FileStore`` in the job directory (no port to
  race for), gloo on CPU and NCCL on CUDA, bound to the loopback interface. Each trains on
  every ``N``-th row of every batch under DeepSpeed (fedgate.train.fit), in lockstep.
- Rank 0 writes ``out/result.safetensors`` (the adapter state after training) and
  ``out/result.json``; every rank writes ``out/rank-R.json`` (its peak memory, rows trained) and logs to
  ``logs/rank-R.log``. The launcher turns rank 0's result into the reply
  (:func:`fedgate.federated.client.local_update`: delta, local DP, personal gates).

:func:`run_job` runs any ``module:function`` on the ranks the same way (the engine
benchmark's per-rank memory), :func:`run_selftest` only joins the group and all-reduces.

Cleanup: rank 0 leads a new process group that the other ranks join. When a rank fails or
``engine.timeout-s`` passes, the launcher kills the whole group and raises naming the rank;
the job directory is removed either way. A watchdog thread in every rank kills the group
when the launcher is gone (SIGKILL, Flower's forced exit) or long past the deadline. Every
rank carries ``FEDGATE_RANKS_TOKEN`` in its environment, so leftovers can be found
(:func:`processes_with_token`).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Collection, Mapping

import numpy as np

log = logging.getLogger(__name__)

TOKEN_VAR = "FEDGATE_RANKS_TOKEN"  # in every rank's environment: finds leftover ranks
FAULT_VAR = "FEDGATE_RANKS_FAULT"  # tests only: "raise:R" or "hang:R" makes rank R fail or hang after joining
POLL_S = 0.2  # how often the launcher and the watchdogs look
GRACE_S = 5.0  # between SIGTERM and SIGKILL of a rank group
WATCHDOG_MARGIN_S = 10.0  # a rank kills its group this long after the launcher's deadline
LOG_TAIL_CHARS = 3000
FAILURE_SETTLE_S = 2.0  # after a rank fails, how long the others get to exit before the group is killed


class RankFailed(RuntimeError):
    """A rank of a multi-process client exited with an error."""


# ---------------------------------------------------------------------------- launcher
def run_ranks(run_config: Mapping[str, Any], node_config: Mapping[str, Any], partition_id: int,
              num_partitions: int, global_state: Mapping[str, np.ndarray], server_round: int,
              prior: Mapping[str, float] | float | None = None, *, pruned: Collection[str] = (),
              personal: Mapping[str, np.ndarray] | None = None):
    """A local round trained by ``engine.world-size`` ranks; the reply, as ``ClientTask.train``
    gives it (a :class:`fedgate.federated.client.LocalUpdate`)."""
    from fedgate.federated.client import LocalRound, client_config, local_update
    from fedgate.state import from_numpy, load_state, save_state

    cfg = client_config(run_config, node_config)
    world = cfg.engine.world_size
    start = from_numpy(global_state)
    job_dir = Path(tempfile.mkdtemp(prefix="fedgate-ranks-"))
    try:
        save_state(job_dir / "in" / "global.safetensors", start)
        if personal:
            save_state(job_dir / "in" / "personal.safetensors", from_numpy(personal))
        _write_json(job_dir / "in" / "job.json", {
            "kind": "train", "run_config": dict(run_config), "node_config": dict(node_config),
            "partition_id": int(partition_id), "num_partitions": int(num_partitions),
            "server_round": int(server_round), "prior": prior, "pruned": sorted(pruned),
            "personal": bool(personal)})
        t0 = time.perf_counter()
        launch(job_dir, world, cfg.engine.timeout_s, threads=cfg.train.threads,
               cuda=_uses_cuda(cfg.train.device))
        wall_s = time.perf_counter() - t0
        after, _ = load_state(job_dir / "out" / "result.safetensors")
        out = json.loads((job_dir / "out" / "result.json").read_text())
        ranks = [json.loads((job_dir / "out" / f"rank-{r}.json").read_text()) for r in range(world)]
        done = LocalRound(after=after, num_examples=out["num_examples"], train_loss=out["train_loss"],
                          steps=out["steps"], local=out["local"], gate_stats=out["gate_stats"],
                          train_s=out["train_s"], setup_s=out["setup_s"],
                          rss_peak_mb=max(r["rss_peak_mb"] for r in ranks), flipped_rows=out["flipped_rows"],
                          rows_trained=max(r["rows_trained"] for r in ranks))
    finally:
        shutil.rmtree(job_dir, ignore_errors=True)
    update = local_update(done, start, cfg, server_round, partition_id, prior)
    update.metrics.update({"world-size": float(world), "ranks-wall-s": wall_s})
    return update


def run_job(entry: str, payload: Mapping[str, Any], world_size: int, timeout_s: float, *, threads: int = 0,
            cuda: bool = False, on_start: Callable[[list[int]], None] | None = None) -> list[dict]:
    """Run ``entry`` (``"module:function"``) on ``world_size`` ranks in a process group and
    return what each rank's call returned (a JSON-able dict), in rank order. The function is
    called as ``function(job_dir, job, rank)``, ``job`` holding ``payload``; benchmarks use
    this to measure per-rank memory."""
    job_dir = Path(tempfile.mkdtemp(prefix="fedgate-ranks-"))
    try:
        _write_json(job_dir / "in" / "job.json", {**payload, "kind": entry})
        launch(job_dir, world_size, timeout_s, threads=threads, cuda=cuda, on_start=on_start)
        return [json.loads((job_dir / "out" / f"rank-{r}.json").read_text()) for r in range(world_size)]
    finally:
        shutil.rmtree(job_dir, ignore_errors=True)


def run_selftest(world_size: int, timeout_s: float, *,
                 on_start: Callable[[list[int]], None] | None = None) -> float:
    """Start ``world_size`` ranks that join a group and all-reduce their rank + 1: checks the
    launch, the rendezvous and the cleanup without a model. Returns the sum."""
    return float(run_job("selftest", {}, world_size, timeout_s, on_start=on_start)[0]["sum"])


def launch(job_dir: Path, world_size: int, timeout_s: float, *, threads: int = 0, cuda: bool = False,
           on_start: Callable[[list[int]], None] | None = None) -> None:
    """Run the job in ``job_dir`` on ``world_size`` rank processes until every one has exited
    0. Raises :class:`RankFailed` naming the failed rank, or ``TimeoutError`` after
    ``timeout_s``; no rank outlives this call."""
    job_path = job_dir / "in" / "job.json"
    job = json.loads(job_path.read_text())
    deadline = time.time() + timeout_s
    _write_json(job_path, {**job, "world_size": world_size, "deadline": deadline, "launcher_pid": os.getpid()})
    (job_dir / "logs").mkdir(exist_ok=True)
    (job_dir / "out").mkdir(exist_ok=True)
    token = uuid.uuid4().hex
    threads = threads or max(1, len(os.sched_getaffinity(0)) // world_size)
    procs: list[subprocess.Popen] = []
    try:
        for rank in range(world_size):
            with open(job_dir / "logs" / f"rank-{rank}.log", "wb") as logfile:
                # rank 0 leads a new process group, the others join it (setpgid: same session only)
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "fedgate.federated.ranks", str(job_dir)],
                    env=_rank_env(rank, world_size, token, threads, cuda), stdin=subprocess.DEVNULL,
                    stdout=logfile, stderr=subprocess.STDOUT, process_group=procs[0].pid if procs else 0))
        if on_start is not None:
            on_start([p.pid for p in procs])
        while True:
            codes = [p.poll() for p in procs]
            if any(code not in (None, 0) for code in codes):
                # the rank at fault may still be exiting while a peer that lost it already has
                settle = time.monotonic() + FAILURE_SETTLE_S
                while time.monotonic() < settle and any(p.poll() is None for p in procs):
                    time.sleep(0.05)
                raise RankFailed(_failure_message(job_dir, [p.poll() for p in procs]))
            if all(code == 0 for code in codes):
                return
            if time.time() > deadline:
                running = [r for r, code in enumerate(codes) if code is None]
                raise TimeoutError(f"ranks {running} of {world_size} still running after engine.timeout-s="
                                   f"{timeout_s:g} s; killed. Log tail of rank {running[0]}:\n"
                                   f"{_log_tail(job_dir, running[0])}")
            time.sleep(POLL_S)
    finally:
        _stop(procs)


def _rank_env(rank: int, world_size: int, token: str, threads: int, cuda: bool) -> dict[str, str]:
    """The launcher's environment with this rank's variables written over it (never kept from
    the launcher: a simulation actor has RANK=0, WORLD_SIZE=1 of its own group)."""
    import fedgate

    env = dict(os.environ)
    root = str(Path(fedgate.__file__).resolve().parents[1])  # this fedgate, not an installed one first on sys.path
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
                "GLOO_SOCKET_IFNAME": "lo", "NCCL_SOCKET_IFNAME": "lo",  # listen on loopback only
                "OMP_NUM_THREADS": str(threads), TOKEN_VAR: token})
    # LOCAL_SIZE would enable DeepSpeed's shared-memory collectives, which spin without a timeout
    env.pop("LOCAL_SIZE", None)
    if not cuda:
        env["DS_ACCELERATOR"] = "cpu"
    return env


def _uses_cuda(device: str) -> bool:
    import torch

    return torch.cuda.is_available() and not device.startswith("cpu")


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM the ranks' process group, SIGKILL it after a grace period, reap every rank.
    The group is signalled only while one of its ranks is unreaped (the group id cannot have
    been reused then)."""
    if procs and any(p.returncode is None for p in procs):
        group = procs[0].pid
        _signal_group(group, signal.SIGTERM)
        end = time.monotonic() + GRACE_S
        while time.monotonic() < end and any(p.poll() is None for p in procs):
            time.sleep(0.05)
        if any(p.returncode is None for p in procs):
            _signal_group(group, signal.SIGKILL)
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def _signal_group(group: int, sig: signal.Signals) -> None:
    try:
        os.killpg(group, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _failure_message(job_dir: Path, codes: list[int | None]) -> str:
    """Name the rank that failed first (by the time in its error record, written before it
    exits) and why; the others usually fail only because a peer left their collective."""
    failed = [r for r, code in enumerate(codes) if code not in (None, 0)]
    records = {}
    for r in range(len(codes)):
        path = job_dir / "out" / f"error-{r}.json"
        if path.is_file():
            records[r] = json.loads(path.read_text())
    first = min(records, key=lambda r: records[r]["time"]) if records else failed[0]
    why = records[first]["error"] if first in records else "no error record (killed?)"
    return (f"rank {first} of {len(codes)} failed (exit code {codes[first]}): {why}; failed ranks {failed}. "
            f"Log tail of rank {first}:\n{_log_tail(job_dir, first)}")


def _log_tail(job_dir: Path, rank: int) -> str:
    path = job_dir / "logs" / f"rank-{rank}.log"
    return path.read_text(errors="replace")[-LOG_TAIL_CHARS:] if path.is_file() else "(no log)"


def _write_json(path: Path, value: Any) -> None:
    """Write JSON atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


def processes_with_token(token: str = "") -> list[int]:
    """PIDs of processes whose environment has ``FEDGATE_RANKS_TOKEN`` (equal to ``token`` when
    given): ranks, or leftovers of ranks."""
    needle = f"{TOKEN_VAR}={token}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if any(var.startswith(needle) for var in env.split(b"\0")):
            found.append(int(entry.name))
    return found


# ---------------------------------------------------------------------------- rank
def main(argv: list[str] | None = None) -> None:
    """One rank: join the group, run the job, leave the group. Failures are recorded in
    ``out/error-R.json`` for the launcher before the exception ends the process."""
    job_dir = Path((argv if argv is not None else sys.argv[1:])[0])
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    job = json.loads((job_dir / "in" / "job.json").read_text())
    _start_watchdog(job["launcher_pid"], job["deadline"] + WATCHDOG_MARGIN_S)
    logging.basicConfig(level=logging.INFO, format=f"rank {rank} %(asctime)s %(name)s: %(message)s")
    try:
        import torch.distributed as dist

        backend = "gloo" if os.environ.get("DS_ACCELERATOR") == "cpu" else "nccl"
        dist.init_process_group(backend, store=dist.FileStore(str(job_dir / "store"), world), rank=rank,
                                world_size=world, timeout=timedelta(seconds=max(1.0, job["deadline"] - time.time())))
        _injected_fault(rank)
        record = _entry(job["kind"])(job_dir, job, rank)
        _write_json(job_dir / "out" / f"rank-{rank}.json", record)
        dist.barrier()
        dist.destroy_process_group()
    except BaseException as e:
        _write_json(job_dir / "out" / f"error-{rank}.json",
                    {"time": time.time(), "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})
        raise


def _start_watchdog(launcher_pid: int, deadline: float) -> None:
    """Kill this rank's whole group once the launcher is gone (this process was re-parented)
    or the deadline has passed: the launcher's cleanup does not run on SIGKILL or a forced
    exit. A thread that polls, as Flower's own parent watch does."""
    def watch() -> None:
        while True:
            if os.getppid() != launcher_pid or time.time() > deadline:
                os.killpg(os.getpgrp(), signal.SIGKILL)
            time.sleep(POLL_S)

    threading.Thread(target=watch, name="fedgate-ranks-watchdog", daemon=True).start()


def _injected_fault(rank: int) -> None:
    """The test seam ``FEDGATE_RANKS_FAULT=raise:R|hang:R``: rank R fails or hangs once it has joined."""
    what, _, target = os.environ.get(FAULT_VAR, "").partition(":")
    if not what or int(target) != rank:
        return
    if what == "raise":
        raise RuntimeError(f"injected fault ({FAULT_VAR}={what}:{target})")
    if what == "hang":
        while True:
            time.sleep(1.0)
    raise ValueError(f"{FAULT_VAR} must be raise:RANK or hang:RANK, got {what}:{target}")


def _entry(kind: str) -> Callable[[Path, dict, int], dict]:
    """The function a job runs on every rank: a local round, the self-test, or ``module:function``."""
    if kind in ("train", "selftest"):
        return _train if kind == "train" else _selftest
    module, _, name = kind.partition(":")
    return getattr(importlib.import_module(module), name)


def _selftest(job_dir: Path, job: dict, rank: int) -> dict:
    import torch
    import torch.distributed as dist

    value = torch.tensor([rank + 1.0])
    dist.all_reduce(value)
    return {"sum": float(value)}


def _train(job_dir: Path, job: dict, rank: int) -> dict:
    """Every rank builds the client and trains in lockstep; rank 0 writes the result."""
    import dataclasses

    import torch.distributed as dist

    from fedgate.federated.client import ClientTask, client_config
    from fedgate.memory import peak_mib
    from fedgate.state import load_state, save_state, to_numpy

    cfg = client_config(job["run_config"], job["node_config"])
    if cfg.train.cache_lower_layers and not cfg.train.cache_dir:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, cache_dir=str(job_dir / "cache")))
    # rank 0 encodes the shard and caches its frozen lower layers first; the others read them
    if rank:
        dist.barrier()
    task = ClientTask(cfg, job["partition_id"], job["num_partitions"])
    if not rank:
        dist.barrier()
    global_state = to_numpy(load_state(job_dir / "in" / "global.safetensors")[0])
    personal = to_numpy(load_state(job_dir / "in" / "personal.safetensors")[0]) if job["personal"] else None
    done = task.local_round(global_state, job["server_round"], job["prior"], pruned=job["pruned"], personal=personal)
    if rank == 0:
        save_state(job_dir / "out" / "result.safetensors.tmp", done.after)
        os.replace(job_dir / "out" / "result.safetensors.tmp", job_dir / "out" / "result.safetensors")
        _write_json(job_dir / "out" / "result.json", {
            "num_examples": done.num_examples, "train_loss": done.train_loss, "steps": done.steps,
            "local": {k: float(v) for k, v in done.local.items()}, "gate_stats": done.gate_stats,
            "train_s": done.train_s, "setup_s": done.setup_s, "flipped_rows": done.flipped_rows})
    return {"rss_peak_mb": peak_mib(), "rows_trained": done.rows_trained}


if __name__ == "__main__":
    main()
