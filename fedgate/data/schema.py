"""The HelpSteer row schema: column names, validation of one row, and the misaligned cut.

Every loader funnels rows through :func:`validate_row`, so a bad value is reported once,
in one wording, with the place it came from (``file:line`` or ``file: row N``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Any

import datasets
import numpy as np

from fedgate.errors import InputError

ATTRIBUTES: tuple[str, ...] = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
TEXT_FIELDS: tuple[str, ...] = ("prompt", "response")
OPTIONAL_FIELDS: tuple[str, ...] = ("domain", "kind")
REQUIRED_FIELDS: tuple[str, ...] = TEXT_FIELDS + ATTRIBUTES
COLUMNS: tuple[str, ...] = REQUIRED_FIELDS + OPTIONAL_FIELDS

ATTRIBUTE_MIN, ATTRIBUTE_MAX = 0, 4

FEATURES = datasets.Features(
    {
        **{name: datasets.Value("string") for name in TEXT_FIELDS},
        **{name: datasets.Value("int64") for name in ATTRIBUTES},
        **{name: datasets.Value("string") for name in OPTIONAL_FIELDS},
    }
)


class DataError(InputError):
    """A data problem; the message names the file and line (or key / partition)."""


def _attribute_value(name: str, value: Any, where: str) -> int:
    """Return `value` as an int in 0-4, or raise naming the field and the bad value."""
    problem = f"{where}: field {name!r} must be an integer {ATTRIBUTE_MIN}-{ATTRIBUTE_MAX}, got {value!r}"
    # bool is an int subclass (and np.bool_ is not): both are rejected explicitly.
    if isinstance(value, (bool, np.bool_)):
        raise DataError(problem)
    if isinstance(value, numbers.Integral):
        number = int(value)
    elif isinstance(value, numbers.Real):
        as_float = float(value)
        if not math.isfinite(as_float) or not as_float.is_integer():
            raise DataError(problem)
        number = int(as_float)
    else:
        raise DataError(problem)
    if not ATTRIBUTE_MIN <= number <= ATTRIBUTE_MAX:
        raise DataError(problem)
    return number


def _text_value(name: str, value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: field {name!r} must be a string, got {type(value).__name__} {value!r:.60}")
    if not value.strip():
        raise DataError(f"{where}: field {name!r} is empty")
    return value


def validate_row(row: Any, where: str) -> dict[str, Any]:
    """Check one raw row and return it normalised to exactly :data:`COLUMNS`.

    `where` is the location prefix for messages, e.g. ``"data/train.jsonl:12"``.
    Extra fields are dropped; ``domain``/``kind`` default to ``""``.
    """
    if not isinstance(row, Mapping):
        raise DataError(f"{where}: expected an object with fields {list(REQUIRED_FIELDS)}, got {type(row).__name__}")
    for name in REQUIRED_FIELDS:
        if name not in row or row[name] is None:
            raise DataError(f"{where}: missing field {name!r}")
    out: dict[str, Any] = {name: _text_value(name, row[name], where) for name in TEXT_FIELDS}
    for name in ATTRIBUTES:
        out[name] = _attribute_value(name, row[name], where)
    for name in OPTIONAL_FIELDS:
        value = row.get(name)
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise DataError(f"{where}: field {name!r} must be a string, got {type(value).__name__} {value!r:.60}")
        out[name] = value
    return out


def rows_to_dataset(rows: Iterable[Mapping[str, Any]]) -> datasets.Dataset:
    """Build a Dataset with the canonical columns and types from already-valid rows
    (``domain``/``kind`` may be absent: they default to ``""``)."""
    columns: dict[str, list[Any]] = {name: [] for name in COLUMNS}
    for row in rows:
        for name in REQUIRED_FIELDS:
            columns[name].append(row[name])
        for name in OPTIONAL_FIELDS:
            columns[name].append(row.get(name) or "")
    return datasets.Dataset.from_dict(columns, features=FEATURES)


def binarize_misaligned(helpfulness: Any, threshold: int = 2) -> np.ndarray:
    """True where a response is misaligned, i.e. its helpfulness is <= `threshold`."""
    return np.asarray(helpfulness) <= threshold
