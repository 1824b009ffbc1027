"""Tokenised examples, cached frozen layers, and padded batches.

Caching: when every adapter sits at or above layer ``split_at`` of a BERT-style encoder, the
embeddings and layers below it are frozen and input-independent of training, so their output
is computed once per text and kept (float16, which is 8x finer than bf16 at the same memory,
trimmed to the text's length). Each training step then runs only the upper layers. For clients that revisit their shard every round this
removes most of the forward cost.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from fedgate.config import ModelConfig
from fedgate.data import ATTRIBUTES
from fedgate.model import RewardModel

log = logging.getLogger(__name__)


@dataclass
class EncodedSplit:
    """One split, tokenised. ``texts`` holds each distinct text's token ids (prompts shared by
    several responses are encoded once); ``fields`` maps a field ("prompt_", "response_" or
    "" for joint inputs) to each row's index into ``texts``."""

    texts: list[torch.Tensor]
    fields: dict[str, np.ndarray]
    labels: torch.Tensor  # (n, 5) on the 0-4 scale
    kinds: list[str]
    hidden: list[torch.Tensor] | None = None  # cached lower-layer output per text: (len, d)
    split_at: int | None = None
    meta: dict = field(default_factory=dict)
    groups: np.ndarray | None = None  # per row, which prompt it answers (rows of one prompt share a number)

    def __len__(self) -> int:
        return self.labels.shape[0]

    def subset(self, idx: np.ndarray) -> "EncodedSplit":
        """Rows ``idx``; texts (and their cache) are shared, not copied."""
        idx = np.asarray(idx)
        return EncodedSplit(self.texts, {k: v[idx] for k, v in self.fields.items()}, self.labels[idx],
                            [self.kinds[i] for i in idx], self.hidden, self.split_at, self.meta,
                            None if self.groups is None else self.groups[idx])


def encode_split(ds, tokenizer, mcfg: ModelConfig) -> EncodedSplit:
    """Tokenise a HelpSteer-format dataset (columns prompt, response, attributes, kind)."""
    labels = torch.tensor(np.stack([np.asarray(ds[a]) for a in ATTRIBUTES], axis=1), dtype=torch.float32)
    kinds = list(ds["kind"]) if "kind" in ds.column_names else [""] * len(ds)
    return encode_texts(list(ds["prompt"]), list(ds["response"]), labels, kinds, tokenizer, mcfg)


def encode_pairs(ds, tokenizer, mcfg: ModelConfig) -> EncodedSplit:
    """Tokenise preference pairs (columns prompt, chosen, rejected, margin) as ``2N`` rows:
    row ``2i`` is pair i's chosen reply, row ``2i + 1`` its rejected one, both after the same
    prompt. A conversation's prompt is cut from the left (its last turns are kept). The
    attribute labels are unknown (zeros); ``meta`` holds ``pairs=True`` and the margins."""
    prompts = [p for p in ds["prompt"] for _ in range(2)]
    replies = [r for c, rj in zip(ds["chosen"], ds["rejected"]) for r in (c, rj)]
    kinds = ["chosen", "rejected"] * len(ds)
    split = encode_texts(prompts, replies, torch.zeros(len(replies), len(ATTRIBUTES)), kinds, tokenizer, mcfg,
                         prompt_side="left")
    split.meta.update(pairs=True, margin=np.asarray(ds["margin"], dtype=np.float32))
    return split


def is_pairs(split: EncodedSplit) -> bool:
    return bool(split.meta.get("pairs"))


def encode_texts(prompts: list[str], responses: list[str], labels: torch.Tensor, kinds: list[str], tokenizer,
                 mcfg: ModelConfig, *, prompt_side: str = "right") -> EncodedSplit:
    """Tokenise (prompt, response) rows; ``prompt_side`` is where a long prompt is cut."""
    texts: list[torch.Tensor] = []
    unique_prompts = list(dict.fromkeys(prompts))
    where = {p: i for i, p in enumerate(unique_prompts)}
    groups = np.array([where[p] for p in prompts], dtype=np.int64)
    if mcfg.pairing == "joint":
        enc = tokenizer(prompts, responses, truncation="longest_first",
                        max_length=mcfg.max_prompt_tokens + mcfg.max_response_tokens)
        texts = [torch.tensor(ids) for ids in enc["input_ids"]]
        return EncodedSplit(texts, {"": np.arange(len(texts))}, labels, kinds, groups=groups)
    side = tokenizer.truncation_side
    try:
        tokenizer.truncation_side = prompt_side
        p_ids = tokenizer(unique_prompts, truncation=True, max_length=mcfg.max_prompt_tokens)["input_ids"]
    finally:
        tokenizer.truncation_side = side
    r_ids = tokenizer(responses, truncation=True, max_length=mcfg.max_response_tokens)["input_ids"]
    texts = [torch.tensor(ids) for ids in p_ids] + [torch.tensor(ids) for ids in r_ids]
    fields = {
        "prompt_": groups,
        "response_": len(unique_prompts) + np.arange(len(responses)),
    }
    return EncodedSplit(texts, fields, labels, kinds, groups=groups)


def _pad(seqs: list[torch.Tensor], pad_value: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D id tensors or 2-D (len, d) hidden tensors; returns (padded, mask)."""
    n, longest = len(seqs), max(s.shape[0] for s in seqs)
    out = seqs[0].new_full((n, longest, *seqs[0].shape[1:]), pad_value)
    mask = torch.zeros(n, longest, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : s.shape[0]] = s
        mask[i, : s.shape[0]] = 1
    return out, mask


def make_batch(split: EncodedSplit, rows: np.ndarray, pad_id: int, device: torch.device,
               use_cache: bool = True) -> dict[str, torch.Tensor]:
    """Padded model inputs for ``rows`` (cached hidden states when available) plus labels."""
    batch: dict[str, torch.Tensor] = {"labels": split.labels[rows].to(device)}
    for prefix, index in split.fields.items():
        text_ids = index[rows]
        if use_cache and split.hidden is not None:
            hidden, mask = _pad([split.hidden[t] for t in text_ids], 0.0)
            batch[f"{prefix}hidden"] = hidden.to(device, torch.float32)
        else:
            ids, mask = _pad([split.texts[t] for t in text_ids], pad_id)
            batch[f"{prefix}input_ids"] = ids.to(device)
        batch[f"{prefix}attention_mask"] = mask.to(device)
    return batch


@torch.no_grad()
def cache_lower_layers(model: RewardModel, split: EncodedSplit, split_at: int, pad_id: int,
                       device: torch.device, *, batch_size: int = 64, progress: bool = True,
                       dtype: torch.dtype = torch.float16) -> None:
    """Fill ``split.hidden`` with the output of embeddings + layers [0, split_at) per text."""
    if not model.can_split():
        raise ValueError("lower-layer caching needs a BERT-style encoder (embeddings + encoder.layer)")
    was_training = model.training
    model.eval()
    order = np.argsort([t.shape[0] for t in split.texts])  # similar lengths together: less padding
    hidden: list[torch.Tensor | None] = [None] * len(split.texts)
    chunks = range(0, len(order), batch_size)
    for start in tqdm(chunks, desc=f"caching layers <{split_at}", disable=not progress, leave=False):
        ids_ = order[start : start + batch_size]
        ids, mask = _pad([split.texts[i] for i in ids_], pad_id)
        out = model.lower(ids.to(device), mask.to(device), split_at).to("cpu", dtype)
        for j, i in enumerate(ids_):
            hidden[i] = out[j, : split.texts[i].shape[0]].clone()
    split.hidden = hidden  # type: ignore[assignment]
    split.split_at = split_at
    model.train(was_training)


def iterate_batches(n: int, batch_size: int, rng: np.random.Generator | None,
                    lengths: np.ndarray | None = None, pool: int = 50) -> list[np.ndarray]:
    """Row indices per batch; in order without ``rng``. With ``rng`` and ``lengths``, rows are
    shuffled, sorted by length within pools of ``pool`` batches, and the batches shuffled:
    similar lengths share a batch (less padding) while every epoch still differs."""
    if rng is None:
        order = np.arange(n)
    elif lengths is None:
        order = rng.permutation(n)
    else:
        perm = rng.permutation(n)
        chunk = batch_size * pool
        order = np.concatenate([c[np.argsort(lengths[c], kind="stable")] for c in np.split(perm, range(chunk, n, chunk))])
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if rng is not None and lengths is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def row_lengths(split: EncodedSplit) -> np.ndarray:
    """Tokens per row over all its fields (what a batch pads to)."""
    sizes = np.array([t.shape[0] for t in split.texts])
    return sum(sizes[index] for index in split.fields.values())


def sorted_batches(split: EncodedSplit, batch_size: int) -> list[np.ndarray]:
    """Batches of rows in length order (for inference: least padding); callers scatter the
    results back by the row indices."""
    order = np.argsort(row_lengths(split), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pair_rows(pairs: np.ndarray) -> np.ndarray:
    """Row indices of pairs ``pairs``: each pair's chosen row then its rejected row."""
    return np.stack([2 * pairs, 2 * pairs + 1], axis=1).ravel()
