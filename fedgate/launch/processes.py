"""Starting and stopping the Flower processes a launcher owns, by PID.

Flower's SuperLink and SuperNodes spawn children (``flower-superexec``, ``flwr-serverapp``,
Ray workers); stopping a launcher's processes means stopping those too, and nothing else.
Linux (``/proc``) is assumed for finding children.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    # Ray (the simulation runtime) binds its servers to the machine's address and to every
    # interface unless it runs as a single local node: then it listens on loopback only.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


def flower_env(flwr_home: str | Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment every Flower process of ours gets: no telemetry, no update check, no
    runtime dependency installation, offline hubs, a private FLWR_HOME."""
    env = dict(os.environ if base is None else base)
    env.update(FLOWER_ENV)
    env["FLWR_HOME"] = str(Path(flwr_home).resolve())
    # Flower's executables (flwr, flower-superlink, and the flower-superexec / flwr-serverapp
    # they spawn) from this interpreter's environment, even when it is not activated.
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    return env


@contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """While the block runs, SIGTERM (``timeout``, a job scheduler, ``kill``) exits the way
    Ctrl-C does: the stack unwinds, so the ``finally`` blocks that stop the SuperLink, the
    SuperNodes and Ray run, and the process exits with 128 + 15. Python's default would end the
    process at once and leave them running. Outside the main thread, where no handler can be
    set, the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def unwind(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, unwind)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_http_ok(url: str, timeout: float, process=None) -> None:
    """Poll ``url`` until it answers 2xx; raise if ``process`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process {process.pid} exited with code {process.returncode} before {url} was up")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if 200 <= r.status < 300:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def children(pid: int) -> list[int]:
    """All descendants of ``pid`` (from /proc), deepest last."""
    by_parent: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        by_parent.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in by_parent.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is gone
    except OSError:
        return False


def stop_tree(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM ``pid`` and its descendants, then SIGKILL whatever is left after ``timeout``."""
    tree = [pid, *children(pid)]
    for p in tree:
        try:
            os.kill(p, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in tree):
        time.sleep(0.2)
    for p in tree:
        if alive(p):
            log.warning("process %d did not stop on SIGTERM; killing it", p)
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass


def processes_with_flwr_home(flwr_home: str | Path) -> list[int]:
    """Live PIDs whose environment names this FLWR_HOME: what a launcher must leave behind
    is none of them."""
    needle = f"FLWR_HOME={Path(flwr_home).resolve()}".encode()
    found = []
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            if needle in env.read_bytes().split(b"\0") and alive(int(env.parent.name)):
                found.append(int(env.parent.name))
        except OSError:
            continue
    return found


def stop_flwr_home(flwr_home: str | Path, grace: float = 15.0) -> None:
    """Stop whatever still runs with this private FLWR_HOME: processes that left the tree
    of the process we started (Ray actors reparented while Ray shuts down) are ours too.
    They get ``grace`` seconds to exit on their own, then SIGTERM / SIGKILL."""
    deadline = time.monotonic() + grace
    while (left := processes_with_flwr_home(flwr_home)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in left:
        log.warning("process %d of this run was still running; stopping it", pid)
        stop_tree(pid)


def _address(hex_addr: str) -> tuple[str, int]:
    """An address as /proc/net/tcp{,6} writes it ("0100007F:1F90"): (host, port)."""
    host_hex, port_hex = hex_addr.split(":")
    raw = bytes.fromhex(host_hex)
    if len(raw) == 4:
        host = socket.inet_ntop(socket.AF_INET, raw[::-1])
    else:  # four little-endian 32-bit words
        host = socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
    return host, int(port_hex, 16)


def listening_addresses(pids: list[int]) -> list[tuple[str, int, int]]:
    """(host, port, pid) of every TCP socket in LISTEN state that one of ``pids`` holds:
    what a launcher has exposed (Linux /proc). Check them with :func:`is_loopback`."""
    inodes: dict[str, int] = {}
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = pid
        except OSError:
            continue
    found = []
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A = LISTEN
                host, port = _address(fields[1])
                found.append((host, port, inodes[fields[9]]))
    return found


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1, or an IPv4-mapped loopback address (::ffff:127.0.0.1)."""
    import ipaddress

    ip = ipaddress.ip_address(host)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)
