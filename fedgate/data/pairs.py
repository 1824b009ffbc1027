"""Preference pairs: one prompt, a chosen and a rejected reply.

Three sources give pairs with the columns of :data:`PAIR_COLUMNS`:

- **HH-RLHF transcripts** (``{"chosen": str, "rejected": str}``, each a whole conversation
  written as ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``; ``.jsonl``, ``.jsonl.gz`` or
  ``.json``). The prompt is every turn before the final assistant reply, multi-turn kept as
  text; the replies are the two final assistant turns. **Rule for pairs whose conversations
  differ before the last reply**: such a pair compares two conversations, not two replies
  to one prompt, so it is left out; :class:`PairReport` counts them and names their lines.
- **TRL-style rows** ``{"prompt", "chosen", "rejected"}``, each a string or a list of chat
  messages ``{"role", "content"}`` (the prompt's messages become text the HH way; a reply
  given as messages is its last assistant message).
- **HelpSteer-format rows** (:mod:`fedgate.data.schema`): every two responses to the same
  prompt whose helpfulness differs make a pair, the more helpful one chosen; ``margin`` is
  the helpfulness difference (1-4). Pairs from preference files have margin 0 (unknown).

A malformed row stops the load with ``file:line`` and what is wrong (missing or non-string
field, a conversation without an assistant turn, an empty reply, identical replies), unless
the caller asks to skip malformed rows (``bad_rows="skip"``), in which case the report
counts them and keeps their locations. Bytes that are not UTF-8 and broken gzip streams
name the file (and the byte offset where known).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from fedgate.data.schema import DataError
from fedgate.data.textfile import json_records

log = logging.getLogger(__name__)

PAIR_COLUMNS: tuple[str, ...] = ("prompt", "chosen", "rejected", "margin", "source")
PAIR_FEATURES = datasets.Features({
    "prompt": datasets.Value("string"), "chosen": datasets.Value("string"), "rejected": datasets.Value("string"),
    "margin": datasets.Value("int64"), "source": datasets.Value("string"),
})
PAIR_SUFFIXES: tuple[str, ...] = (".jsonl", ".jsonl.gz", ".json", ".json.gz")
BAD_ROWS = ("error", "skip")
_TURN = re.compile(r"\n\n(Human|Assistant): ?")
_ROLES = {"human": "Human", "user": "Human", "assistant": "Assistant", "system": "System"}


@dataclass
class PairReport:
    """What a load kept and what it left out, with the locations of what it left out."""

    pairs: int = 0
    differing_prefix: list[str] = field(default_factory=list)  # HH pairs whose conversations differ earlier
    malformed: list[str] = field(default_factory=list)  # "file:line: reason", only with bad_rows="skip"

    def summary(self) -> str:
        parts = [f"{self.pairs} pairs"]
        if self.differing_prefix:
            parts.append(f"{len(self.differing_prefix)} left out because the two conversations differ before "
                         f"the last reply (first: {self.differing_prefix[0]})")
        if self.malformed:
            parts.append(f"{len(self.malformed)} malformed rows skipped (first: {self.malformed[0]})")
        return "; ".join(parts)


# ----------------------------------------------------------------------------- reading


# ----------------------------------------------------------------------------- one row


def split_transcript(text: str, where: str, name: str) -> list[tuple[str, str]]:
    """An HH transcript as ``[(speaker, text), ...]`` (speaker ``Human`` / ``Assistant``)."""
    parts = _TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        raise DataError(f"{where}: field {name!r} is not a transcript of '\\n\\nHuman: ...' / "
                        f"'\\n\\nAssistant: ...' turns (starts {text[:40]!r})")
    return [(parts[i], parts[i + 1]) for i in range(1, len(parts), 2)]


def render_turns(turns: Sequence[tuple[str, str]]) -> str:
    """Turns as one prompt text, speaker-labelled, multi-turn kept."""
    return "\n\n".join(f"{speaker}: {text.strip()}" for speaker, text in turns)


def _string(row: Mapping, name: str, where: str) -> str:
    if name not in row or row[name] is None:
        raise DataError(f"{where}: missing field {name!r}")
    value = row[name]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {name!r} must be a string, got {type(value).__name__} {value!r:.60}")
    return value


def _reply(text: str, where: str, name: str) -> str:
    if not text.strip():
        raise DataError(f"{where}: the {name} reply is empty")
    return text.strip()


def _hh_pair(row: Mapping, where: str, report: PairReport) -> dict | None:
    sides = {}
    for name in ("chosen", "rejected"):
        turns = split_transcript(_string(row, name, where), where, name)
        if turns[-1][0] != "Assistant":
            raise DataError(f"{where}: the {name} conversation does not end with an Assistant turn")
        sides[name] = turns
    if sides["chosen"][:-1] != sides["rejected"][:-1]:
        report.differing_prefix.append(where)
        return None
    prompt = render_turns(sides["chosen"][:-1])
    if not prompt:
        raise DataError(f"{where}: the conversation has no turn before the assistant's reply")
    return {"prompt": prompt, "chosen": _reply(sides["chosen"][-1][1], where, "chosen"),
            "rejected": _reply(sides["rejected"][-1][1], where, "rejected"), "margin": 0, "source": "hh"}


def _messages(value: list, where: str, name: str) -> list[tuple[str, str]]:
    turns = []
    for i, m in enumerate(value):
        if not (isinstance(m, Mapping) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise DataError(f"{where}: field {name!r} message {i} must be an object with string 'role' and "
                            f"'content', got {m!r:.60}")
        role = _ROLES.get(m["role"].lower())
        if role is None:
            raise DataError(f"{where}: field {name!r} message {i} has role {m['role']!r}; expected one of "
                            f"{sorted(_ROLES)}")
        turns.append((role, m["content"]))
    return turns


def _trl_text(row: Mapping, name: str, where: str, *, reply: bool) -> str:
    if name not in row or row[name] is None:
        raise DataError(f"{where}: missing field {name!r}")
    value = row[name]
    if isinstance(value, str):
        return _reply(value, where, name) if reply else value
    if isinstance(value, list):
        turns = _messages(value, where, name)
        if not reply:
            return render_turns(turns)
        assistant = [t for s, t in turns if s == "Assistant"]
        if not assistant:
            raise DataError(f"{where}: field {name!r} has no assistant message")
        return _reply(assistant[-1], where, name)
    raise DataError(f"{where}: field {name!r} must be a string or a list of messages, got {type(value).__name__}")


def _trl_pair(row: Mapping, where: str) -> dict:
    prompt = _trl_text(row, "prompt", where, reply=False)
    if not prompt.strip():
        raise DataError(f"{where}: field 'prompt' is empty")
    return {"prompt": prompt, "chosen": _trl_text(row, "chosen", where, reply=True),
            "rejected": _trl_text(row, "rejected", where, reply=True), "margin": 0, "source": "trl"}


def parse_pair(row: Any, where: str, report: PairReport) -> dict | None:
    """One raw record as a pair, ``None`` when the HH rule leaves it out; raises
    :class:`DataError` naming ``where`` when it is malformed."""
    if not isinstance(row, Mapping):
        raise DataError(f"{where}: expected an object with fields 'chosen' and 'rejected', got {type(row).__name__}")
    pair = _trl_pair(row, where) if "prompt" in row else _hh_pair(row, where, report)
    if pair is not None and pair["chosen"] == pair["rejected"]:
        raise DataError(f"{where}: the chosen and rejected replies are identical")
    return pair


# ----------------------------------------------------------------------------- files and datasets


def is_pair_file(path: str | Path) -> bool:
    """Whether a local file holds preference pairs: a pair suffix and a first record with
    ``chosen`` and ``rejected`` fields (HelpSteer-format files have ``response``)."""
    path = Path(path)
    if not (path.is_file() and path.name.lower().endswith(PAIR_SUFFIXES)):
        return False
    try:
        _, first = next(json_records(path))
    except (StopIteration, DataError):
        return path.name.lower().endswith(".gz")  # a broken .gz is only ever a pair file: let its reader say why
    return is_pair_record(first)


def is_pair_record(record: Any) -> bool:
    """A record of a preference pair: it has ``chosen`` and ``rejected`` fields."""
    return isinstance(record, Mapping) and "chosen" in record and "rejected" in record


def is_pair_dataset(ds: datasets.Dataset) -> bool:
    """A loaded split of preference pairs (columns ``PAIR_COLUMNS``), not rated rows."""
    return "chosen" in ds.column_names and "rejected" in ds.column_names


def noisy_columns(ds: datasets.Dataset) -> tuple[str, ...]:
    """The text columns semantic noise perturbs: the prompt and every reply."""
    return ("prompt", "chosen", "rejected") if is_pair_dataset(ds) else ("prompt", "response")


def flip_pairs(ds: datasets.Dataset, fraction: float, seed: int = 0) -> datasets.Dataset:
    """Conflicting feedback on pairs: chosen and rejected swapped for exactly
    ``round(fraction * len(ds))`` random pairs, marked in a boolean ``flipped`` column."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    if "flipped" in ds.column_names:
        raise DataError("flip_pairs: the pairs already have a 'flipped' column (applied twice?)")
    count = round(fraction * len(ds))
    flipped = np.zeros(len(ds), dtype=bool)
    flipped[np.random.default_rng(seed).choice(len(ds), size=count, replace=False)] = True
    chosen, rejected = list(ds["chosen"]), list(ds["rejected"])
    new_chosen = [r if f else c for c, r, f in zip(chosen, rejected, flipped)]
    new_rejected = [c if f else r for c, r, f in zip(chosen, rejected, flipped)]
    out = ds.remove_columns(["chosen", "rejected"])
    out = out.add_column("chosen", new_chosen).add_column("rejected", new_rejected).add_column("flipped", flipped.tolist())
    return out.select_columns([*ds.column_names, "flipped"])


def pairs_to_dataset(pairs: Sequence[Mapping[str, Any]]) -> datasets.Dataset:
    return datasets.Dataset.from_dict({c: [p[c] for p in pairs] for c in PAIR_COLUMNS}, features=PAIR_FEATURES)


def read_pairs(path: str | Path, *, bad_rows: str = "error") -> tuple[datasets.Dataset, PairReport]:
    """Every pair of one local file (HH transcripts or TRL-style rows), validated, with the
    report of what was left out. ``bad_rows="skip"`` skips malformed rows (counted and
    located in the report) instead of stopping at the first."""
    if bad_rows not in BAD_ROWS:
        raise ValueError(f"bad_rows must be one of {BAD_ROWS}, got {bad_rows!r}")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if not path.name.lower().endswith(PAIR_SUFFIXES):
        raise DataError(f"{path}: unsupported file type; preference pairs come as {', '.join(PAIR_SUFFIXES)}")
    report, pairs = PairReport(), []
    for where, raw in json_records(path):
        try:
            pair = parse_pair(raw, where, report)
        except DataError as exc:
            if bad_rows == "error":
                raise
            report.malformed.append(str(exc))
            continue
        if pair is not None:
            pairs.append(pair)
    if not pairs:
        raise DataError(f"{path}: no usable pairs ({report.summary()})")
    report.pairs = len(pairs)
    log.info("%s: %s", path, report.summary())
    return pairs_to_dataset(pairs), report


def pairs_from_ratings(ds: datasets.Dataset, source: str = "helpsteer") -> datasets.Dataset:
    """Pairs from HelpSteer-format rows: every two responses to one prompt whose
    helpfulness differs, the more helpful chosen, the difference as ``margin``."""
    by_prompt: dict[str, list[tuple[str, int]]] = {}
    for prompt, response, helpfulness in zip(ds["prompt"], ds["response"], ds["helpfulness"]):
        by_prompt.setdefault(prompt, []).append((response, int(helpfulness)))
    pairs = []
    for prompt, answers in by_prompt.items():
        for (ra, ha), (rb, hb) in combinations(answers, 2):
            if ha != hb and ra != rb:
                chosen, rejected = (ra, rb) if ha > hb else (rb, ra)
                pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "margin": abs(ha - hb),
                              "source": source})
    if not pairs:
        raise DataError(f"no two responses to one prompt differ in helpfulness ({ds.num_rows} rows, "
                        f"{len(by_prompt)} prompts): no pairs to build")
    return pairs_to_dataset(pairs)
