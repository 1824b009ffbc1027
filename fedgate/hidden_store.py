"""The frozen lower layers' output on disk, so another process need not compute it again.

Caching the layers below the first adapter (``train.cache-lower-layers``) is the most
expensive step of setting up a client: a full forward pass of the lower layers over every
row. A long-lived process keeps it in memory, but a Flower simulation hands a partition to
whichever worker is free, and a deployed SuperNode starts a fresh process per message, so
the same states were computed again and again. With ``train.cache-dir`` set, each encoded
split's states are written once to ``<cache-dir>/<key>.safetensors`` and read back by any process.

The key is a hash of everything the states depend on: the token ids of every text of the
split, the layer the cache stops at, the stored dtype, and the weights and buffers of the
embeddings and of every layer below it. A changed row, tokenizer, backbone or
``model.top-layers`` gives a new key, never stale states. Files are written to a temporary
name and renamed, so a reader never sees half a file; delete the folder whenever you like.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from fedgate.batching import EncodedSplit
from fedgate.model import RewardModel

log = logging.getLogger(__name__)
FORMAT = b"fedgate-hidden-v1"


def lower_modules(model: RewardModel, split_at: int) -> list[torch.nn.Module]:
    """The modules whose output is cached: the embeddings and layers [0, split_at)."""
    backbone = model.backbone
    return [backbone.embeddings, *backbone.encoder.layer[:split_at]]


def _update(h: "hashlib._Hash", t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def states_key(model: RewardModel, split: EncodedSplit, split_at: int, dtype: torch.dtype) -> str:
    """Hex digest naming the cached states of ``split`` under ``model``'s lower layers."""
    h = hashlib.blake2b(FORMAT, digest_size=20)
    h.update(f"|split_at={split_at}|dtype={dtype}|texts={len(split.texts)}|".encode())
    for module in lower_modules(model, split_at):
        for name, t in module.state_dict().items():
            h.update(name.encode())
            _update(h, t)
    for ids in split.texts:
        _update(h, ids)
    return h.hexdigest()


def load_states(directory: str | Path, model: RewardModel, split: EncodedSplit, split_at: int,
                dtype: torch.dtype = torch.float16) -> bool:
    """Fill ``split.hidden`` from the store; False (split unchanged) when it holds no entry."""
    path = Path(directory) / f"{states_key(model, split, split_at, dtype)}.safetensors"
    if not path.is_file():
        return False
    try:
        saved = load_file(path)
        hidden = list(torch.split(saved["hidden"], saved["lengths"].tolist()))
    except Exception as e:  # e.g. a file cut short by a full disk: recompute
        log.warning("ignoring unreadable cached states %s: %s", path, e)
        return False
    if len(hidden) != len(split.texts) or any(h.shape[0] != t.shape[0] for h, t in zip(hidden, split.texts)):
        log.warning("ignoring cached states %s: they do not match the split's texts", path)
        return False
    split.hidden, split.split_at = hidden, split_at  # type: ignore[assignment]
    return True


def save_states(directory: str | Path, model: RewardModel, split: EncodedSplit) -> Path:
    """Write ``split.hidden`` (filled by :func:`fedgate.batching.cache_lower_layers`)."""
    if split.hidden is None or split.split_at is None:
        raise ValueError("the split has no cached states to save")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dtype = split.hidden[0].dtype if split.hidden else torch.float16
    path = directory / f"{states_key(model, split, split.split_at, dtype)}.safetensors"
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    lengths = torch.tensor([h.shape[0] for h in split.hidden], dtype=torch.long)
    hidden = torch.cat(list(split.hidden)) if split.hidden else torch.empty(0, dtype=dtype)
    save_file({"lengths": lengths, "hidden": hidden.contiguous()}, str(tmp))
    os.replace(tmp, path)
    return path
