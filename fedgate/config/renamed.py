"""Keys that moved to another section. A user who gives an old name gets one line naming
the new one (:func:`refuse_renamed`); a saved run's config (run directories, study records
written before the move) is read with its keys moved (:func:`migrate`)."""

from __future__ import annotations

from typing import Any, Mapping

_SHARD_KEYS = ("partitioner", "alpha", "local-holdout", "flipped-clients", "flipped-rows", "absent-clients",
               "labeled-fraction")
RENAMED: dict[str, str] = {f"federation.{k}": f"shards.{k}" for k in _SHARD_KEYS}


def refuse_renamed(key: str) -> None:
    """A KeyError naming the new key when ``key`` is an old name."""
    if key in RENAMED:
        raise KeyError(f"config key {key!r} is now {RENAMED[key]!r} (the client shards have their own section)")


def migrate(flat: Mapping[str, Any]) -> dict[str, Any]:
    """A saved flat config with its old key names moved to the new ones."""
    return {RENAMED.get(k, k): v for k, v in flat.items()}


def migrate_config_string(config: str) -> str:
    """A saved ``key=value key=value`` run string (study records) with old key names moved."""
    for old, new in RENAMED.items():
        config = config.replace(f"{old}=", f"{new}=")
    return config
