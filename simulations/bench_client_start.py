"""Benchmark: how long a fresh client process takes before it trains, with and without the
lower-layer states on disk.

    python -m simulations.bench_client_start [--partitions 4] [--repeats 2] [--set KEY=VALUE ...]

In the deployment runtime every message starts a fresh ClientApp process: it loads the
backbone, reads and encodes its shard and runs the frozen lower layers over every row before
the first training step. With ``train.cache-dir`` (``simulations.deploy`` gives each SuperNode
one) those states are written once and read back by every later process
(``fedgate/hidden_store.py``). Each measurement here is a fresh process building one client
(``ClientTask``) of the app's default config: ``cold`` with an empty cache folder, ``warm``
reading the states the cold process left. Printed per process: interpreter and import
time, backbone load, shard setup (read, encode, lower-layer states), and the first local
round's training time; the figures are medians over ``--repeats`` processes each.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one_process(cache_dir: str, partition: int, partitions: int, extra: dict, train: bool) -> dict:
    """Build one client as a fresh ClientApp process would (this process), timing each part."""
    t_import = time.perf_counter()
    from fedgate.config import FedgateConfig
    from fedgate.federated import client as client_module
    from fedgate.model import build_reward_model
    from fedgate.state import adapter_state, to_numpy
    from fedgate.launch.simulation import REPO, app_config

    cfg = FedgateConfig.from_flat({**app_config(REPO), **extra, "train.cache-dir": cache_dir})
    imported = time.perf_counter()
    t0 = time.perf_counter()
    import torch

    torch.manual_seed(cfg.train.seed)
    model, tokenizer = build_reward_model(cfg.model, cfg.adapter)
    backbone_s = time.perf_counter() - t0
    # the process cache ClientTask looks in: the model is there, so its setup time is the shard's alone
    client_module._CACHE.models[(cfg.model, cfg.adapter)] = (model, tokenizer)
    task = client_module.ClientTask(cfg, partition, partitions)
    result = {"import_s": imported - t_import, "backbone_s": backbone_s, "shard_s": task.setup_s,
              "rows": len(task.shard.train) + len(task.shard.holdout)}
    if train:
        update = task.train(to_numpy(adapter_state(model)), 1)
        result.update(train_s=update.metrics["train-s"], steps=update.metrics["steps"])
    return result


def _child(cache_dir: Path, args, extra_flags: list[str]) -> dict:
    cmd = [sys.executable, "-m", "simulations.bench_client_start", "--one", str(cache_dir),
           "--partitions", str(args.partitions), *extra_flags, *(f"--set={kv}" for kv in args.set)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if done.returncode != 0:
        raise RuntimeError(f"the client process failed\n{done.stderr[-1500:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - t0
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulations.bench_client_start", description=__doc__.split("\n\n")[0])
    p.add_argument("--partitions", type=int, default=4, help="the federation's clients (partition 0 is built)")
    p.add_argument("--repeats", type=int, default=2, help="cold and warm processes each")
    p.add_argument("--no-train", action="store_true", help="stop after the setup (no local round)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--one", metavar="CACHE_DIR", help=argparse.SUPPRESS)  # internal: one client process, JSON out
    args = p.parse_args(argv)
    extra = dict(kv.split("=", 1) for kv in args.set)
    if args.one is not None:
        print(json.dumps(one_process(args.one, 0, args.partitions, extra, train=not args.no_train)))
        return 0
    flags = ["--no-train"] if args.no_train else []
    runs: dict[str, list[dict]] = {"cold": [], "warm": []}
    try:
        for i in range(args.repeats):
            with tempfile.TemporaryDirectory(prefix="fedgate-start-") as tmp:
                cache = Path(tmp) / "states"
                runs["cold"].append(_child(cache, args, flags))
                runs["warm"].append(_child(cache, args, flags))
                shutil.rmtree(cache, ignore_errors=True)
            print(f"repeat {i + 1}/{args.repeats}: cold shard {runs['cold'][-1]['shard_s']:.2f} s, "
                  f"warm shard {runs['warm'][-1]['shard_s']:.2f} s", flush=True)
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1
    cols = ["process_s", "import_s", "backbone_s", "shard_s"] + ([] if args.no_train else ["train_s"])
    print(f"\n[partition 0 of {args.partitions}, {runs['cold'][0]['rows']} rows; medians of {args.repeats} "
          f"fresh processes; seconds]")
    print("| cache | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
    for kind, rows in runs.items():
        print(f"| {kind} | " + " | ".join(f"{statistics.median(r[c] for r in rows):.2f}" for c in cols) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
