"""Run a fedgate federation in Flower's deployment runtime on one host: one SuperLink and
one SuperNode process per client (per GPU), then ``flwr run`` against them.

    python -m simulations.deploy --nodes 2                      # TLS + SuperNode authentication
    python -m simulations.deploy --nodes 4 --gpus 0,1,2,3       # one GPU per SuperNode
    python -m simulations.deploy --nodes 2 --gpus 0,1:2,3 --run-config 'engine.name="deepspeed"'
                                                                # two GPUs per SuperNode, one rank each
    python -m simulations.deploy --nodes 2 --insecure           # plain HTTP on loopback

Each SuperNode gets its own port, ``CUDA_VISIBLE_DEVICES`` (``--gpus``) and node config
``partition-id=i num-partitions=n train.cache-dir=RUN_DIR/node-states/node-i`` (a ClientApp
process per message reads its lower layers' states from there after the first round).
``--gpus`` gives one device per node (``0,1,2,3``) or, with ``:`` between nodes, several
(``0,1:2,3``): a node with k devices also gets ``engine.world-size=k``, so its client trains
as k DeepSpeed ranks, one per device (``fedgate/federated/ranks.py``). With
TLS (the default) test certificates and node keys are generated into the run directory
(``simulations/certs.py``); with authentication (the default with TLS) every node's public
key is registered with the SuperLink before the node starts, and a node whose key is not
registered is refused. Everything started here is
stopped here, by PID. For separate machines, README.md lists the same commands by hand.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from fedgate.launch.fab import staged_app
from fedgate.launch.processes import flower_env, free_port, sigterm_unwinds, stop_flwr_home, stop_tree
from fedgate.launch.simulation import (REPO, exit_code, flwr_run_command, prepare_run, resolve_config,
                                       run_succeeded, stream_flwr_run)

log = logging.getLogger("fedgate.deploy")
CONNECTION = "fedgate-deploy"
NODE_STATES = "node-states"  # each SuperNode's train.cache-dir, removed when the deployment stops


@dataclass
class Deployment:
    """The processes of one deployment and how to reach its SuperLink."""

    run_dir: Path
    env: dict
    host: str = "127.0.0.1"
    port: int = 0
    tls: bool = True
    auth: bool = True
    pki: object | None = None  # simulations.certs.LoopbackPki when tls
    superlink: subprocess.Popen | None = None
    nodes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def logs(self) -> Path:
        path = self.run_dir / "logs"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _spawn(self, cmd: list[str], name: str, env: dict | None = None) -> subprocess.Popen:
        out = (self.logs / f"{name}.log").open("w")
        proc = subprocess.Popen(cmd, env=env or self.env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        log.info("%s: pid %d (log %s)", name, proc.pid, self.logs / f"{name}.log")
        return proc

    def start_superlink(self) -> None:
        from simulations.certs import generate

        self.port = self.port or free_port(self.host)
        cmd = ["flower-superlink", "--host", self.host, "--port", str(self.port),
               "--database", str(self.run_dir / "flwr-home" / "superlink.db")]
        if self.tls:
            self.pki = generate(self.run_dir / "pki", 0)
            cmd += self.pki.superlink_args()
            if self.auth:
                cmd.append("--enable-supernode-auth")
        else:
            cmd.append("--insecure")
        self.superlink = self._spawn(cmd, "superlink")
        self._wait_healthy(timeout=90)
        self._write_connection()

    def _wait_healthy(self, timeout: float) -> None:
        scheme = "https" if self.tls else "http"
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert)) if self.tls else None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.superlink.poll() is not None:
                raise RuntimeError(f"flower-superlink exited with code {self.superlink.returncode}; "
                                   f"see {self.logs / 'superlink.log'}")
            try:
                with urllib.request.urlopen(f"{scheme}://{self.host}:{self.port}/health", timeout=2,
                                            context=context) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"SuperLink on {self.host}:{self.port} not healthy after {timeout:.0f} s")

    def _write_connection(self) -> None:
        home = Path(self.env["FLWR_HOME"])
        home.mkdir(parents=True, exist_ok=True)
        security = (f'root-certificates = "{self.pki.ca_cert}"' if self.tls else "insecure = true")
        (home / "config.toml").write_text(f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
                                          f'address = "{self.host}:{self.port}"\n{security}\n')

    def node_key(self, index: int):
        """Node ``index``'s key pair (generated on first use)."""
        from simulations.certs import write_node_keys

        return write_node_keys(self.run_dir / "pki", 1, start=index)[0]

    def register(self, public_key: Path) -> None:
        done = subprocess.run(["flwr", "supernode", "register", str(public_key), CONNECTION, "--format", "json"],
                              env=self.env, capture_output=True, text=True)
        if done.returncode != 0 or '"success": true' not in done.stdout.replace('":true', '": true'):
            raise RuntimeError(f"registering {public_key} failed: {done.stdout.strip()} {done.stderr.strip()}")

    def start_node(self, index: int, num_nodes: int, *, gpu: str | None = None, register: bool = True,
                   node_config: str = "") -> subprocess.Popen:
        if "train.cache-dir" not in node_config:
            # every message starts a fresh ClientApp process: keep this node's lower-layer
            # states on disk between rounds instead of recomputing them each time
            node_config = f'{node_config} train.cache-dir="{self.run_dir / NODE_STATES / f"node-{index}"}"'
        cmd = ["flower-supernode", "--superlink", f"{self.host}:{self.port}", "--host", "127.0.0.1",
               "--port", str(free_port()), "--node-config",
               f"partition-id={index} num-partitions={num_nodes} {node_config.strip()}".strip()]
        if self.tls:
            cmd += ["--root-certificates", str(self.pki.ca_cert)]
            if self.auth:
                key = self.node_key(index)
                if register:
                    self.register(key.public_key)
                cmd += ["--auth-supernode-private-key", str(key.private_key)]
        else:
            cmd.append("--insecure")
        env = dict(self.env)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        proc = self._spawn(cmd, f"supernode-{index}", env)
        self.nodes.append(proc)
        return proc

    def online_nodes(self) -> int:
        done = subprocess.run(["flwr", "supernode", "ls", CONNECTION, "--format", "json"], env=self.env,
                              capture_output=True, text=True)
        try:
            nodes = json.loads(done.stdout).get("nodes", [])
        except json.JSONDecodeError:
            return 0
        return sum(1 for n in nodes if n.get("status") == "online")

    def wait_online(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while (online := self.online_nodes()) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{online} of {count} SuperNodes online after {timeout:.0f} s; see {self.logs}")
            time.sleep(2)

    def stop(self) -> None:
        for proc in [*self.nodes, self.superlink]:
            if proc is not None:
                stop_tree(proc.pid)
        stop_flwr_home(self.env["FLWR_HOME"])
        shutil.rmtree(self.run_dir / NODE_STATES, ignore_errors=True)
        log.info("stopped the SuperLink and %d SuperNodes", len(self.nodes))


def gpu_groups(text: str, nodes: int) -> list[str]:
    """``--gpus`` as each node's ``CUDA_VISIBLE_DEVICES``: ``0,1,2,3`` is one device per node,
    ``0,1:2,3`` (``:`` between nodes) gives each node the devices listed for it."""
    groups = text.split(":") if ":" in text else text.split(",")
    for group in groups:
        devices = group.split(",")
        if not all(d.strip().isdigit() for d in devices) or len(set(devices)) != len(devices):
            raise ValueError(f"--gpus {text!r}: {group!r} is not a list of distinct device numbers")
    if len(groups) != nodes:
        raise ValueError(f"--gpus {text!r} gives devices for {len(groups)} nodes, --nodes is {nodes}: "
                         "one entry per node (several devices of one node joined by ',' and nodes by ':')")
    return [",".join(d.strip() for d in group.split(",")) for group in groups]


def deploy(run_config: list[str], *, nodes: int = 2, tls: bool = True, auth: bool = True,
           gpus: list[str] | None = None, out: str | Path | None = None, app: str | Path = REPO,
           host: str = "127.0.0.1", port: int = 0, timeout: float | None = None) -> tuple[int, Path]:
    """Start, run, stop; returns (exit code, run directory) like simulations.run.simulate."""
    if auth and not tls:
        raise ValueError("SuperNode authentication needs TLS (Flower refuses it on an insecure SuperLink)")
    if gpus and len(gpus) != nodes:
        raise ValueError(f"--gpus lists devices for {len(gpus)} nodes, --nodes is {nodes}; give one entry per node")
    app = Path(app).resolve()
    ranks = [len(g.split(",")) for g in gpus] if gpus else [1] * nodes
    if max(ranks) > 1 and resolve_config(app, run_config)[0].engine.name != "deepspeed":
        raise ValueError(f"--gpus gives a node {max(ranks)} devices, which its client trains as that many "
                         "DeepSpeed ranks: add --run-config 'engine.name=\"deepspeed\"'")
    overrides, run_dir = prepare_run(app, run_config, out)
    d = Deployment(run_dir, flower_env(run_dir / "flwr-home"), host=host, port=port, tls=tls, auth=auth)
    started_at = time.time()
    with sigterm_unwinds():
        try:
            d.start_superlink()
            for i in range(nodes):
                d.start_node(i, nodes, gpu=gpus[i] if gpus else None,
                             node_config=f"engine.world-size={ranks[i]}" if ranks[i] > 1 else "")
            d.wait_online(nodes)
            with staged_app(app) as bundle:
                code = stream_flwr_run(flwr_run_command(bundle, CONNECTION, overrides), d.env, timeout,
                                       log_file=run_dir / "run.log", verbose=False)
        finally:
            d.stop()
    return (0 if run_succeeded(code, run_dir / "summary.json", started_at) else 1), run_dir


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="python -m simulations.deploy", description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--gpus", help="CUDA devices: one per node (0,1,2,3), or several per node with ':' "
                                  "between nodes (0,1:2,3: two ranks per node)")
    p.add_argument("--insecure", action="store_true", help="plain HTTP, no TLS, no authentication")
    p.add_argument("--no-auth", action="store_true", help="TLS without SuperNode authentication")
    p.add_argument("--host", default="127.0.0.1", help="SuperLink address (loopback by default)")
    p.add_argument("--port", type=int, default=0, help="SuperLink port (default: a free one)")
    p.add_argument("--run-config", action="append", default=[])
    p.add_argument("--out", help="run directory (default runs/fed-<time>)")
    p.add_argument("--timeout", type=float)
    args = p.parse_args(argv)
    try:
        gpus = gpu_groups(args.gpus, args.nodes) if args.gpus else None
    except ValueError as e:
        p.error(str(e))
    return exit_code(deploy, args.run_config, nodes=args.nodes, tls=not args.insecure,
                     auth=not (args.insecure or args.no_auth), gpus=gpus, out=args.out, host=args.host,
                     port=args.port, timeout=args.timeout)


if __name__ == "__main__":
    sys.exit(main())
