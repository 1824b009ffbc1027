"""A federated run's directory: everything a run writes, and reading it back to resume.

    config.json               resolved config (flat keys) and package versions
    rounds.jsonl              one JSON object per round (round 0 = the initial global model)
    checkpoints/round-NNN.safetensors   global adapters after round NNN; the header holds the
                              round, the config, the gate profile and the strategy's settings
    checkpoints/round-NNN.server.safetensors   the strategy's arrays (server optimizer state,
                              SCAFFOLD's control variate), when it has any (what resuming needs)
    test_predictions.csv      the final global model's test predictions (ROC curve)
    summary.json              final metrics, totals and status ("completed" or "failed")
    report.md, plots/         written by fedgate.federated.report
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from fedgate.state import from_numpy, load_state, save_state, to_numpy

CHECKPOINT_DIR = "checkpoints"
ROUNDS_FILE = "rounds.jsonl"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.json"
PREDICTIONS_FILE = "test_predictions.csv"
_CHECKPOINT = re.compile(r"round-(\d+)\.safetensors$")


def json_safe(obj: Any) -> Any:
    """NaN and infinities become null (strict JSON); numpy scalars become Python numbers."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def default_run_dir(base: str | Path = "runs") -> Path:
    return Path(base) / time.strftime("fed-%Y%m%d-%H%M%S")


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).resolve()
        self.path.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ writing
    def write_json(self, name: str, obj: Any) -> Path:
        """Write atomically (temp file + rename): a crash never leaves half a file."""
        target = self.path / name
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_text(json.dumps(json_safe(obj), indent=2, sort_keys=True, allow_nan=False) + "\n")
        tmp.replace(target)
        return target

    def append_round(self, record: Mapping[str, Any]) -> None:
        with (self.path / ROUNDS_FILE).open("a") as f:
            f.write(json.dumps(json_safe(record), sort_keys=True, allow_nan=False) + "\n")
            f.flush()

    def save_checkpoint(self, server_round: int, state: Mapping[str, np.ndarray], meta: Mapping[str, Any],
                        server_arrays: Mapping[str, np.ndarray] | None = None) -> Path:
        """The global state (and the strategy's arrays, written first: a checkpoint that
        exists always has its server file)."""
        path = self.path / CHECKPOINT_DIR / f"round-{server_round:03d}.safetensors"
        if server_arrays:
            side = path.with_name(f"round-{server_round:03d}.server.safetensors")
            tmp = side.with_name(side.name + ".tmp")
            save_state(tmp, from_numpy(dict(server_arrays)), {"round": server_round})
            tmp.replace(side)
        tmp = path.with_name(path.name + ".tmp")
        save_state(tmp, from_numpy(state), json_safe({**meta, "round": server_round}))
        tmp.replace(path)
        return path

    # ------------------------------------------------------------------ reading
    def rounds(self) -> list[dict]:
        path = self.path / ROUNDS_FILE
        if not path.is_file():
            return []
        out = []
        for i, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not a JSON object ({e.msg})") from None
        return out

    def keep_rounds_through(self, server_round: int) -> None:
        """Drop records of rounds after ``server_round`` (written after the checkpoint resumed
        from), so a resumed run neither repeats nor loses a round in rounds.jsonl."""
        kept = [r for r in self.rounds() if r.get("round", 0) <= server_round]
        tmp = self.path / (ROUNDS_FILE + ".tmp")
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
        tmp.replace(self.path / ROUNDS_FILE)

    def checkpoints(self) -> dict[int, Path]:
        folder = self.path / CHECKPOINT_DIR
        found = {}
        for p in folder.glob("round-*.safetensors") if folder.is_dir() else []:
            m = _CHECKPOINT.search(p.name)
            if m:
                found[int(m.group(1))] = p
        return dict(sorted(found.items()))

    def server_arrays(self, server_round: int) -> dict[str, np.ndarray]:
        """The strategy's arrays saved with round ``server_round``'s checkpoint ({} if none)."""
        path = self.path / CHECKPOINT_DIR / f"round-{server_round:03d}.server.safetensors"
        return to_numpy(load_state(path)[0]) if path.is_file() else {}

    def read_json(self, name: str) -> dict:
        path = self.path / name
        if not path.is_file():
            raise FileNotFoundError(f"no {name} in run directory {self.path}")
        return json.loads(path.read_text())


def load_checkpoint(path: str | Path) -> tuple[RunDir, int, dict[str, np.ndarray], dict]:
    """A run directory (its latest checkpoint) or one checkpoint file ->
    (run directory, round, global state, header metadata)."""
    path = Path(path)
    if path.is_dir():
        run = RunDir(path)
        found = run.checkpoints()
        if not found:
            raise FileNotFoundError(f"{path}: no checkpoints/round-NNN.safetensors to resume from")
        path = found[max(found)]
    elif path.is_file() and _CHECKPOINT.search(path.name) and path.parent.name == CHECKPOINT_DIR:
        run = RunDir(path.parent.parent)
    else:
        raise FileNotFoundError(f"{path}: neither a run directory nor a checkpoints/round-NNN.safetensors file")
    state, meta = load_state(path)
    if "round" not in meta or "config" not in meta:
        raise ValueError(f"{path}: header lacks 'round' or 'config'; not a fedgate federation checkpoint")
    return run, int(meta["round"]), to_numpy(state), meta
