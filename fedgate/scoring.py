"""Scores from a trained reward model for rows or pairs that need no labels.

Rows (``prompt``, ``response``; attributes, when present, are ignored) get the predicted
attributes on the 0-4 scale, the alignment score (the head's alignment logit) and
``p_aligned`` (its sigmoid). Pairs (HH-RLHF transcripts or ``prompt``/``chosen``/
``rejected``) get both replies' scores, ``p_chosen`` (the Bradley-Terry probability that the
chosen reply wins, ``sigmoid(score_chosen - score_rejected)``) and which reply the model
prefers. Input: a data file, or JSON Lines on standard input; output: JSON Lines, one object
per row or pair, in input order. Batches are sorted by length and the model is in eval
mode, so the same input gives the same scores.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

import datasets
import torch

from fedgate.batching import encode_pairs, encode_texts
from fedgate.data.pairs import PairReport, is_pair_file, is_pair_record, pairs_to_dataset, parse_pair, read_pairs
from fedgate.data.schema import ATTRIBUTES, DataError
from fedgate.model import ALIGNMENT
from fedgate.devices import pick_device
from fedgate.evaluation import predict
from fedgate.trained import Trained


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _text(row: Any, name: str, where: str) -> str:
    if not isinstance(row, dict) or name not in row or row[name] is None:
        raise DataError(f"{where}: missing field {name!r}")
    if not isinstance(row[name], str) or not row[name].strip():
        raise DataError(f"{where}: field {name!r} must be a non-empty string")
    return row[name]


def stdin_records(stream: TextIO) -> Iterator[tuple[str, Any]]:
    for line_no, line in enumerate(stream, start=1):
        if line.strip():
            try:
                yield f"<stdin>:{line_no}", json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"<stdin>:{line_no}: malformed JSON ({exc.msg} at column {exc.colno})") from None


def load_inputs(data: str, stdin: TextIO | None = None) -> tuple[datasets.Dataset, bool]:
    """The rows or pairs to score and whether they are pairs; ``data`` is a file or ``-``."""
    if data == "-":
        records = list(stdin_records(stdin or sys.stdin))
        if not records:
            raise DataError("<stdin>: no JSON Lines to score")
        if is_pair_record(records[0][1]):
            report = PairReport()
            pairs = [parse_pair(r, where, report) for where, r in records]
            if report.differing_prefix:
                raise DataError(f"{report.differing_prefix[0]}: the two conversations differ before the last reply")
            return pairs_to_dataset(pairs), True
        return _rows(records), False
    if is_pair_file(data):
        return read_pairs(data)[0], True
    from fedgate.data.helpsteer import read_records

    return _rows(read_records(data)), False


def _rows(records: Iterable[tuple[str, Any]]) -> datasets.Dataset:
    prompts, responses = [], []
    for where, r in records:
        prompts.append(_text(r, "prompt", where))
        responses.append(_text(r, "response", where))
    if not prompts:
        raise DataError("no rows to score")
    return datasets.Dataset.from_dict({"prompt": prompts, "response": responses})


def score(trained: Trained, ds: datasets.Dataset, pairs: bool, *, progress: bool = False) -> list[dict]:
    """One result per row or pair of ``ds`` (see the module docstring)."""
    cfg, tok = trained.cfg, trained.tokenizer
    if pairs:
        split = encode_pairs(ds, tok, cfg.model)
    else:
        split = encode_texts(list(ds["prompt"]), list(ds["response"]), torch.zeros(len(ds), len(ATTRIBUTES)),
                             [""] * len(ds), tok, cfg.model)
    device = pick_device(cfg.train.device)
    trained.model.to(device)
    pred = predict(trained.model, split, cfg, tok.pad_token_id, device, progress=progress)
    if pairs:
        s = pred[:, ALIGNMENT]
        return [{"pair": i, "chosen_score": round(float(c), 6), "rejected_score": round(float(r), 6),
                 "p_chosen": round(_sigmoid(float(c - r)), 6), "preferred": "chosen" if c >= r else "rejected"}
                for i, (c, r) in enumerate(zip(s[0::2], s[1::2]))]
    return [{"row": i, "alignment_score": round(float(p[ALIGNMENT]), 6),
             "p_aligned": round(_sigmoid(float(p[ALIGNMENT])), 6),
             **{a: round(float(p[j]), 4) for j, a in enumerate(ATTRIBUTES)}} for i, p in enumerate(pred)]


def write_jsonl(results: list[dict], out: str | Path | None, stdout: TextIO | None = None) -> None:
    text = "".join(json.dumps(r) + "\n" for r in results)
    if out is None:
        (stdout or sys.stdout).write(text)
    else:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
