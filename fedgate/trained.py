"""A trained reward model back from disk: a centralized run directory, a federated run
directory (its last checkpoint, or a chosen round's) or an adapters file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedgate.config import FedgateConfig
from fedgate.config.renamed import migrate
from fedgate.errors import InputError
from fedgate.inject import adapter_modules
from fedgate.model import RewardModel, build_reward_model
from fedgate.state import load_adapter_state, load_state

ADAPTER_FILE = "adapters.safetensors"


@dataclass
class Trained:
    model: RewardModel
    tokenizer: object
    cfg: FedgateConfig
    meta: dict  # the adapter file's header: config, decision threshold, a federation's strategy state
    path: Path  # the adapter file it came from


def adapter_file(location: str | Path, round_: int | None = None) -> Path:
    """The adapter file a run directory or file names: ``adapters.safetensors`` of a
    centralized run, the last (or ``round_``'s) checkpoint of a federated run."""
    path = Path(location)
    if not path.exists():
        raise FileNotFoundError(2, "no such file or directory", str(path))
    checkpoints_dir = path / "checkpoints"
    if path.is_dir() and not (path / ADAPTER_FILE).is_file() and checkpoints_dir.is_dir():
        from fedgate.rundir import RunDir

        found = RunDir(path).checkpoints()
        if not found:
            raise FileNotFoundError(2, "a federated run directory without checkpoints", str(checkpoints_dir))
        if round_ is None:
            return found[max(found)]
        if round_ not in found:
            raise InputError(f"{path}: no checkpoint of round {round_}; rounds saved: {sorted(found)}")
        return found[round_]
    if round_ is not None:
        raise InputError(f"{path}: --round picks a federated run's checkpoint; this is not a federated run directory")
    return path / ADAPTER_FILE if path.is_dir() else path


def load_trained(location: str | Path, round_: int | None = None, *, source: str | None = None) -> Trained:
    """Rebuild the model a run trained (backbone from its config, adapters, gates and head
    from the file, pruned insertion points of a federation switched off), in eval mode."""
    path = adapter_file(location, round_)
    state, meta = load_state(path)
    if "config" not in meta:
        raise InputError(f"{path}: no fedgate config in its header; was it written by fedgate?")
    cfg = FedgateConfig.from_flat(migrate(meta["config"]))  # a run saved before a key moved still loads
    if source is not None:
        cfg = FedgateConfig.from_flat({**cfg.to_flat(), "data.source": source})
    model, tokenizer = build_reward_model(cfg.model, cfg.adapter)
    load_adapter_state(model, state)
    pruned = set(meta.get("strategy", {}).get("pruned", []))
    for name, module in adapter_modules(model).items():
        module.enabled = name not in pruned
    model.eval()
    return Trained(model, tokenizer, cfg, meta, path)
