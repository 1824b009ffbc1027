"""Robustness degradations: semantic noise in the inputs, conflicting feedback in labels.

Both are seeded and deterministic, so an experiment can be repeated row for row.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Sequence

import datasets
import numpy as np

from fedgate.data.schema import ATTRIBUTES, DataError

FEEDBACK_MODES: tuple[str, ...] = ("flip", "shuffle")
_SPLIT_KEEP_SPACE = re.compile(r"(\s+)")


def _typo(word: str, rng: random.Random) -> str:
    """Swap two neighbouring characters, drop one, or replace one by another letter."""
    if len(word) < 2:
        return rng.choice([c for c in string.ascii_lowercase if c != word.lower()] or ["x"])
    operation = rng.choice(("swap", "drop", "replace"))
    i = rng.randrange(len(word) - 1) if operation == "swap" else rng.randrange(len(word))
    if operation == "swap" and word[i] != word[i + 1]:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if operation == "drop":
        return word[:i] + word[i + 1 :]
    replacement = rng.choice([c for c in string.ascii_lowercase if c != word[i].lower()])
    return word[:i] + replacement + word[i + 1 :]


def add_semantic_noise(text: str, rate: float, rng: random.Random) -> str:
    """Perturb each word with probability `rate`: a character typo, dropping the word,
    or swapping it with the next word. Whitespace between kept words is preserved."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    if rate == 0.0:
        return text
    parts = _SPLIT_KEEP_SPACE.split(text)  # words at even indices, separators at odd
    words: list[str | None] = parts[0::2]
    i = 0
    while i < len(words):
        word = words[i]
        if word and rng.random() < rate:
            operation = rng.choice(("typo", "drop", "swap"))
            if operation == "typo":
                words[i] = _typo(word, rng)
            elif operation == "drop":
                words[i] = None
            elif i + 1 < len(words) and words[i + 1]:
                words[i], words[i + 1] = words[i + 1], word
                i += 1  # the moved word is not perturbed again
        i += 1
    out: list[str] = []
    for index, word in enumerate(words):
        if word is None:
            continue  # a dropped word takes its following separator with it
        out.append(word)
        if index < len(words) - 1:
            out.append(parts[2 * index + 1])
    return "".join(out).rstrip() if words and words[-1] is None else "".join(out)


def _replace_columns(ds: datasets.Dataset, new: dict[str, list]) -> datasets.Dataset:
    """`ds` with some columns' values replaced (features kept) or new columns added."""
    order = list(ds.column_names) + [name for name in new if name not in ds.column_names]
    out = ds.remove_columns([name for name in new if name in ds.column_names])
    for name, values in new.items():
        feature = ds.features[name] if name in ds.features else None
        out = out.add_column(name, values, feature=feature)
    return out.select_columns(order)


def noisy_dataset(
    ds: datasets.Dataset, rate: float, seed: int = 0, columns: Sequence[str] = ("prompt", "response")
) -> datasets.Dataset:
    """Copy of `ds` with :func:`add_semantic_noise` applied to `columns`, seeded per row."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise DataError(f"noisy_dataset: no column(s) {missing}; columns are {ds.column_names}")
    new: dict[str, list] = {}
    for column in columns:
        values = ds[column]
        new[column] = [
            add_semantic_noise(text, rate, random.Random(f"noise:{seed}:{column}:{index}"))
            for index, text in enumerate(values)
        ]
    return _replace_columns(ds, new)


def conflicting_feedback(
    ds: datasets.Dataset, fraction: float, seed: int = 0, mode: str = "flip"
) -> datasets.Dataset:
    """Make the feedback of a random `fraction` of rows conflict with the rest.

    ``"flip"`` maps every attribute v -> 4 - v; ``"shuffle"`` gives a row the attributes
    of another random row. Exactly ``round(fraction * len(ds))`` rows change; a boolean
    column ``flipped`` marks them.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    if mode not in FEEDBACK_MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {list(FEEDBACK_MODES)}")
    if "flipped" in ds.column_names:
        raise DataError("conflicting_feedback: dataset already has a 'flipped' column (applied twice?)")
    n = len(ds)
    count = round(fraction * n)
    if mode == "shuffle" and count and n < 2:
        raise DataError(f"conflicting_feedback: mode 'shuffle' needs at least 2 rows, got {n}")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(n, size=count, replace=False)) if count else np.array([], dtype=int)
    original = {name: np.asarray(ds[name], dtype=np.int64) for name in ATTRIBUTES}
    changed = {name: values.copy() for name, values in original.items()}
    if mode == "flip":
        for name in ATTRIBUTES:
            changed[name][chosen] = 4 - original[name][chosen]
    else:
        # Another row for each chosen row: draw from n-1 and skip over the row itself.
        donors = rng.integers(0, n - 1, size=count)
        donors = donors + (donors >= chosen)
        for name in ATTRIBUTES:
            changed[name][chosen] = original[name][donors]
    flipped = np.zeros(n, dtype=bool)
    flipped[chosen] = True
    new = {name: changed[name].tolist() for name in ATTRIBUTES}
    new["flipped"] = flipped.tolist()
    return _replace_columns(ds, new)
