"""Load: many simulated clients, a few sampled per round. Does memory stay flat as rounds
go by, and what does a round cost?

    python -m simulations.bench_load                       # 100 clients, 10% per round, 5 rounds
    python -m simulations.bench_load --clients 10,50,100 --sampled 10   # does memory grow with the clients?
    python -m simulations.bench_load --clients 1000 --fraction 0.01 --set model.backbone="tiny-bert"

One real Flower simulation. While it runs, a sampler sums the resident memory (RSS) of
every process of the run (SuperLink, ServerApp, simulation workers: all that carry its
private FLWR_HOME) twice a second. Per round it prints and writes (``load.csv``,
``load.json`` in ``--out``) the wall time, the clients that trained, the ServerApp's RSS
and the peak of the summed RSS during the round. Flat memory means the late rounds peak
no higher than the early ones: the clients' shards and context state do not accumulate.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

from fedgate.rundir import RunDir
from fedgate.memory import total_resident_mib
from fedgate.launch.processes import processes_with_flwr_home
from fedgate.launch.simulation import simulate
from simulations.results import write_table
from simulations.study import config_string, parse_sets

DEFAULTS = {"shards.partitioner": "iid", "data.limit": 2000, "federation.rounds": 5,
            "federation.fraction-evaluate": 0.0, "server.eval-limit": 200, "server.noise-rates": "",
            "server.report": False}


class MemorySampler(threading.Thread):
    """Summed RSS of the processes carrying ``flwr_home``, every ``interval`` seconds."""

    def __init__(self, flwr_home: Path, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.flwr_home, self.interval = flwr_home, interval
        self.samples: list[tuple[float, float, int]] = []  # (unix time, MiB, processes)
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            pids = processes_with_flwr_home(self.flwr_home)
            if pids:
                self.samples.append((time.time(), total_resident_mib(pids), len(pids)))
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def per_round(run_dir: Path, samples: list[tuple[float, float, int]]) -> list[dict]:
    """One row per trained round: wall time, clients, ServerApp RSS, the peak of the summed
    RSS between the end of the previous round and the end of this one (for a round so short
    that no sample fell inside it, the sample nearest its end)."""
    rows, start = [], None
    for r in RunDir(run_dir).rounds():
        end = r.get("finished_at")
        if r["round"] == 0 or end is None:
            start = end if end is not None else start
            continue
        window = [mib for t, mib, _ in samples if (start is None or t > start) and t <= end]
        if not window and samples:  # a round shorter than the sampling interval: the sample nearest its end
            window = [min(samples, key=lambda s: abs(s[0] - end))[1]]
        rows.append({"round": r["round"], "wall_s": round(r["wall_s"]["round"], 1), "clients": len(r["clients"]),
                     "partitions": ",".join(str(int(c["partition-id"])) for c in r["clients"]),
                     "server_rss_mib": round(r.get("server_rss_mib", float("nan")), 1),
                     "peak_total_rss_mib": round(max(window), 1) if window else float("nan"),
                     "processes": max((n for t, _, n in samples if (start is None or t > start) and t <= end),
                                      default=0)})
        start = end
    return rows


def run_load(clients: int, fraction: float, overrides: dict, out: Path, timeout: float | None = None,
             cpus_per_client: float = 1.0) -> tuple[int, list[dict]]:
    flat = {**DEFAULTS, **overrides, "federation.fraction-train": fraction}
    flat.setdefault("federation.min-train-nodes", max(1, round(clients * fraction)))
    out.mkdir(parents=True, exist_ok=True)
    sampler = MemorySampler((out / "flwr-home").resolve())
    sampler.start()
    try:
        code, run_dir = simulate([config_string(flat)], num_supernodes=clients, cpus_per_client=cpus_per_client,
                                 out=out, timeout=timeout)
    finally:
        sampler.stop()
    rows = per_round(run_dir, sampler.samples) if (run_dir / "rounds.jsonl").is_file() else []
    (out / "load.json").write_text(json.dumps({"clients": clients, "fraction": fraction, "config": flat,
                                               "rounds": rows, "samples": sampler.samples}, indent=1))
    return code, rows


ROUND_COLUMNS = {"round": "round", "wall_s": "wall s", "clients": "clients", "server_rss_mib": "ServerApp RSS MiB",
                 "peak_total_rss_mib": "peak RSS of all run processes, MiB", "processes": "processes"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", default="100", help="number of simulated clients; a comma-separated list runs each")
    p.add_argument("--fraction", type=float, default=0.1, help="share of clients sampled per round")
    p.add_argument("--sampled", type=int, default=0, help="clients per round instead of --fraction (same work "
                                                          "per round whatever the number of clients)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--out", default="", help="output folder (default runs/load-<time>)")
    p.add_argument("--timeout", type=float, default=None)
    args = p.parse_args(argv)
    out = Path(args.out or f"runs/load-{time.strftime('%Y%m%d-%H%M%S')}")
    counts = [int(c) for c in args.clients.split(",")]
    summary, worst = [], 0
    for n in counts:
        fraction = min(1.0, args.sampled / n) if args.sampled else args.fraction
        target = out if len(counts) == 1 else out / f"{n}-clients"
        code, rows = run_load(n, fraction, parse_sets(args.set), target, args.timeout)
        worst = max(worst, code)
        if rows:
            target.mkdir(parents=True, exist_ok=True)
            print(write_table(target, rows, ROUND_COLUMNS, name="load"))
            later = rows[1:] or rows
            summary.append({"clients": n, "per_round": rows[0]["clients"],
                            "peak_total_rss_mib": max(r["peak_total_rss_mib"] for r in rows),
                            "peak_after_round_1_mib": max(r["peak_total_rss_mib"] for r in later),
                            "server_rss_mib": max(r["server_rss_mib"] for r in rows),
                            "mean_round_s": round(sum(r["wall_s"] for r in rows) / len(rows), 1)})
    if len(counts) > 1 and summary:
        print(write_table(out, summary, {"clients": "clients", "per_round": "trained per round",
                                         "peak_total_rss_mib": "peak RSS of all run processes, MiB",
                                         "peak_after_round_1_mib": "same, rounds 2+", "server_rss_mib":
                                         "peak ServerApp RSS MiB", "mean_round_s": "mean round s"},
                          name="load_by_clients"))
    return worst


if __name__ == "__main__":
    sys.exit(main())
