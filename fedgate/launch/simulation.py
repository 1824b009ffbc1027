"""Run a fedgate federation in Flower's simulation runtime, start to finish.

    python -m simulations.run [--num-supernodes 4] [--run-config 'federation.rounds=5'] ...
    fedgate simulate ...                      (the same)

What it does that a bare ``flwr run`` does not:
- sets the environment Flower needs here (no telemetry or update check, no runtime
  dependency installation, offline hubs) and a private FLWR_HOME inside the run directory;
- checks the run config against fedgate's keys before anything starts;
- lets the ClientApp workers share the frozen lower layers' states through the run
  directory (``train.cache-dir``, removed when the run ends) instead of recomputing them
  whenever Ray hands a partition to another worker;
- starts its own simulation SuperLink on a free loopback port (so launches never share one)
  and stops it, with all its children, by PID when the run ends;
- streams the run's logs and exits non-zero when the run failed (``flwr run`` returns 0
  even when the ServerApp fails; the run directory's summary.json says what happened).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedgate import strategies
from fedgate.config import FedgateConfig
from fedgate.rundir import ROUNDS_FILE, default_run_dir
from fedgate.launch.fab import staged_app
from fedgate.launch.processes import (flower_env, free_port, sigterm_unwinds, stop_flwr_home, stop_tree,
                                     wait_http_ok)

log = logging.getLogger("fedgate.simulate")
REPO = Path(__file__).resolve().parents[2]  # the checkout: the Flower app fedgate runs by default
CONNECTION = "fedgate-sim"
LOG_FILE = "simulation.log"
STATES_DIR = "lower-layer-states"  # the run's train.cache-dir, removed at its end


def app_config(app: Path) -> dict:
    """The app's ``[tool.flwr.app.config]`` defaults, flattened as Flower does."""
    from flwr.common.config import flatten_dict, get_project_config

    project = get_project_config(app)
    return flatten_dict(project["tool"]["flwr"]["app"].get("config", {}))


def resolve_config(app: Path, run_config: list[str]) -> tuple[FedgateConfig, dict]:
    """Defaults + overrides, validated by fedgate (unknown keys and bad values raise here,
    before any process starts); returns the config and the parsed overrides."""
    import click
    from flwr.common.config import parse_config_args

    # String by string, merged key by key (later wins): Flower merges separate strings table
    # by table, so a later "server.x=..." would drop an earlier "server.y=...".
    overrides: dict = {}
    for text in run_config:
        try:
            overrides.update(parse_config_args([text]))
        except click.ClickException as e:
            raise ValueError(f"--run-config {text!r}: {e.message}") from None
    defaults = app_config(app)
    unknown = sorted(k for k in overrides if k not in defaults)
    if unknown:
        raise KeyError(f"--run-config keys not in {app / 'pyproject.toml'} [tool.flwr.app.config]: {unknown}")
    cfg = FedgateConfig.from_flat({**defaults, **overrides}, ignore_unknown_sections=False)
    return strategies.check(cfg), overrides


def prepare_run(app: Path, run_config: list[str], out: str | Path | None) -> tuple[dict, Path]:
    """Validated overrides (with ``server.output-dir`` set to an absolute path) and the run
    directory: ``out``, else ``server.output-dir``, else runs/fed-<time>; a resumed run
    goes on writing into its own directory. A new run is refused a directory that already
    holds a run's rounds (they would mix)."""
    cfg, _ = resolve_config(app, run_config)
    if cfg.server.resume_from:
        resumed = Path(cfg.server.resume_from).resolve()
        run_dir = resumed.parent.parent if resumed.is_file() else resumed
    else:
        run_dir = Path(out or cfg.server.output_dir or default_run_dir()).resolve()
        if (run_dir / ROUNDS_FILE).exists():
            raise ValueError(f"{run_dir / ROUNDS_FILE} exists: that directory holds a run already; continue it "
                             f"with server.resume-from={json.dumps(str(run_dir))} or give the new run another directory")
    _, overrides = resolve_config(app, [*run_config, f"server.output-dir={json.dumps(str(run_dir))}"])
    run_dir.mkdir(parents=True, exist_ok=True)
    return overrides, run_dir


def run_config_arg(overrides: dict) -> str:
    """Flat overrides as one ``--run-config`` string (TOML values)."""
    return " ".join(f"{k}={json.dumps(v)}" for k, v in overrides.items())


def flwr_run_command(app: Path, connection: str, overrides: dict, federation_config: str = "") -> list[str]:
    """The ``flwr run`` command line that streams a run of ``app`` on a named SuperLink
    connection, with ``overrides`` as its run config."""
    cmd = ["flwr", "run", str(app), connection, "--stream"]
    if federation_config:
        cmd += ["--federation-config", federation_config]
    return cmd + ["--run-config", run_config_arg(overrides)]


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # Ray's and Flower's colour codes
# fedgate's round lines; lines whose level (after an optional "(Actor pid=...)" prefix) is a
# warning or an error; tracebacks
_SHOWN = re.compile(r"fedgate\.progress|^(\([^)]*\)\s*)?(WARNING|ERROR|CRITICAL)\b|^Traceback")


def console_line(line: str) -> bool:
    """Whether a line of the run's output belongs on the console: fedgate's per-round and
    final lines, warnings and errors. Everything goes to the run's log file."""
    return bool(_SHOWN.search(line))


def stream_flwr_run(cmd: list[str], env: dict, timeout: float | None = None, *, log_file: Path | None = None,
                    verbose: bool = True) -> int:
    """Run ``flwr run ... --stream``; returns its exit code. Every output line, without colour
    codes, goes to ``log_file``; the console gets all of them (``verbose``) or only those
    :func:`console_line` keeps (fedgate's one line per round, warnings, errors)."""
    log.info("running: %s", " ".join(cmd))
    sink = log_file.open("a") if log_file is not None else None
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1) as flwr:
        assert flwr.stdout is not None
        watchdog = None
        if timeout:  # fires even when the run has gone silent
            def stop() -> None:
                log.error("run exceeded %.0f s; stopping flwr run", timeout)
                flwr.terminate()

            watchdog = threading.Timer(timeout, stop)
            watchdog.start()
        try:
            for line in flwr.stdout:
                plain = ANSI.sub("", line)
                if sink is not None:
                    sink.write(plain)
                    sink.flush()
                if verbose or console_line(plain):
                    sys.stdout.write(plain)
                    sys.stdout.flush()
            return flwr.wait()
        finally:
            if watchdog is not None:
                watchdog.cancel()
            if sink is not None:
                sink.close()


def run_succeeded(code: int, summary: Path, started_at: float) -> bool:
    """``flwr run`` exits 0 even when the ServerApp failed: only a summary.json written by
    this run with status "completed" counts."""
    status = "missing"
    if summary.is_file() and summary.stat().st_mtime >= started_at:
        status = json.loads(summary.read_text()).get("status", "unknown")
    if code != 0 or status != "completed":
        log.error("run failed: flwr exited %d, summary.json status %r", code, status)
        return False
    return True


def write_connection(flwr_home: Path, port: int) -> None:
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')


@contextmanager
def running_superlink(flwr_home: Path, env: dict) -> Iterator[tuple[subprocess.Popen, int]]:
    """A simulation SuperLink on a free loopback port for the length of the block; on the way
    out, however the block ends, it is stopped with all its children by PID, and so is every
    process still running under ``flwr_home`` (the SuperExec, Ray). Everything after ``Popen``
    returns sits inside the ``try``, so a signal from then on cannot leave it running."""
    port = free_port()
    state = flwr_home / "superlink"
    state.mkdir(parents=True, exist_ok=True)
    cmd = ["flower-superlink", "--insecure", "--simulation", "--isolation", "subprocess",
           "--host", "127.0.0.1", "--port", str(port), "--database", str(state / "state.db"),
           "--log-file", str(state / "superlink.log")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        log.info("SuperLink pid %d on 127.0.0.1:%d (log: %s)", proc.pid, port, state / "superlink.log")
        wait_http_ok(f"http://127.0.0.1:{port}/health", timeout=60, process=proc)
        yield proc, port
    finally:
        stop_tree(proc.pid)
        stop_flwr_home(flwr_home)
        log.info("stopped SuperLink pid %d", proc.pid)


def simulate(run_config: list[str], *, num_supernodes: int = 4, cpus_per_client: float = 1.0,
             gpus_per_client: float = 0.0, out: str | Path | None = None, app: str | Path = REPO,
             timeout: float | None = None, verbose: bool = False) -> tuple[int, Path]:
    """Run one simulation; returns (exit code, run directory). 0 only when summary.json says
    the run completed. The console shows one line per round (all output with ``verbose``);
    the full output is in the run directory's ``simulation.log``. ``gpus_per_client`` is
    Ray's GPU share per ClientApp: at 0 Ray hides every GPU from the clients (they train on
    the CPU); 0.5 lets two clients share one GPU."""
    if gpus_per_client < 0:
        raise ValueError(f"gpus_per_client must be >= 0, got {gpus_per_client}")
    app = Path(app).resolve()
    overrides, run_dir = prepare_run(app, run_config, out)
    states = None
    if "train.cache-dir" not in overrides:
        # one machine: the workers share the lower layers' states instead of each computing
        # them for the partitions Ray hands it (kept for this run only)
        states = run_dir / STATES_DIR
        overrides["train.cache-dir"] = str(states)
    flwr_home = run_dir / "flwr-home"
    env = flower_env(flwr_home)
    summary = run_dir / "summary.json"
    started_at = time.time()
    with sigterm_unwinds():
        try:
            with running_superlink(flwr_home, env) as (_, port), staged_app(app) as bundle:
                write_connection(flwr_home, port)
                resources = f"num-supernodes={num_supernodes} client-resources-num-cpus={cpus_per_client:g}"
                if gpus_per_client:
                    resources += f" client-resources-num-gpus={gpus_per_client:g}"
                cmd = flwr_run_command(bundle, CONNECTION, overrides, resources)
                log.info("full output: %s", run_dir / LOG_FILE)
                code = stream_flwr_run(cmd, env, timeout, log_file=run_dir / LOG_FILE, verbose=verbose)
        finally:
            if states is not None:
                shutil.rmtree(states, ignore_errors=True)
    if not run_succeeded(code, summary, started_at):
        log.error("see the run directory %s and the SuperLink log %s", run_dir,
                  flwr_home / "superlink" / "superlink.log")
        return 1, run_dir
    log.info("run completed: %s", run_dir)
    return 0, run_dir


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="python -m simulations.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--run-config", action="append", default=[], metavar="'KEY=VALUE ...'",
                   help="overrides of [tool.flwr.app.config], TOML values (strings quoted), repeatable")
    p.add_argument("--num-supernodes", type=int, default=4)
    p.add_argument("--cpus-per-client", type=float, default=1.0,
                   help="Ray CPUs per ClientApp (2 on a 2-core machine = one client at a time)")
    p.add_argument("--gpus-per-client", type=float, default=0.0,
                   help="Ray GPUs per ClientApp (0: clients train on the CPU; 0.5: two clients share a GPU)")
    p.add_argument("--out", help="run directory (default: server.output-dir, else runs/fed-<time>)")
    p.add_argument("--app", default=str(REPO), help="Flower app directory (default: this checkout)")
    p.add_argument("--timeout", type=float, default=None, help="stop the run after this many seconds")
    p.add_argument("--verbose", action="store_true",
                   help="print every line of the run's output (default: one line per round, warnings, errors; "
                        "everything is in the run directory's simulation.log)")
    return p


def main(argv: list[str] | None = None, args: argparse.Namespace | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = args or build_parser().parse_args(argv)
    return exit_code(simulate, args.run_config, num_supernodes=args.num_supernodes,
                     cpus_per_client=args.cpus_per_client, gpus_per_client=args.gpus_per_client, out=args.out,
                     app=args.app, timeout=args.timeout, verbose=args.verbose)


def exit_code(launch, *args, **kwargs) -> int:
    """A launcher's exit status: its own (0 or 1), or 2 for a usage or start-up error,
    said in one line on stderr the way every fedgate command says it
    (``fedgate: error: <what>``)."""
    try:
        code, _ = launch(*args, **kwargs)
    except (KeyError, ValueError, TimeoutError, RuntimeError) as e:
        print(f"fedgate: error: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr, flush=True)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
