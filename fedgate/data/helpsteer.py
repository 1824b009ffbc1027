"""Load HelpSteer-format data from the embedded set, a local file or folder, or the hub.

Whatever the source, every row is validated (see :mod:`fedgate.data.schema`) and the first
bad row stops the load with its location: a bad row is never dropped quietly.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from fedgate.data.embedded import build_embedded_dataset
from fedgate.data.schema import ATTRIBUTES, DataError, rows_to_dataset, validate_row
from fedgate.data.textfile import json_records, read_text

log = logging.getLogger(__name__)

SUFFIXES: tuple[str, ...] = (".jsonl", ".json", ".parquet", ".csv")
SPLITS: tuple[str, ...] = ("train", "validation", "test")
# File stems accepted for each split when `source` is a folder, in order of preference.
SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "validation": ("validation", "val", "valid", "dev"),
    "test": ("test",),
}
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


# ----------------------------------------------------------------------------- readers
# Each reader yields (location, raw_row); locations are what error messages show.


def _read_json(path: Path) -> Iterator[tuple[str, Any]]:
    """JSON Lines (one object per line), or one JSON array of objects (``.json``)."""
    return json_records(path)


def _csv_cell(name: str, cell: str | None) -> Any:
    """CSV has no types: attribute cells holding numbers become numbers, the rest stay text."""
    if cell is None or name not in ATTRIBUTES:
        return cell
    for convert in (int, float):
        try:
            return convert(cell)
        except ValueError:
            pass
    return cell


def _read_csv(path: Path) -> Iterator[tuple[str, Any]]:
    """CSV with a header; a row's location is its first physical line (the header is line 1)."""
    read_text(path)  # undecodable bytes: named by file, line and offset before csv sees them
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None:
            raise DataError(f"{path}:1: empty CSV file (no header)")
        first_line = reader.line_num + 1
        for record in reader:
            where = f"{path}:{first_line}"
            if None in record:
                raise DataError(f"{where}: more cells than header columns")
            yield where, {name: _csv_cell(name, cell) for name, cell in record.items()}
            first_line = reader.line_num + 1


def _read_parquet(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq  # datasets depends on pyarrow

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise DataError(f"{path}: cannot read parquet file ({exc})") from exc
    for index, row in enumerate(table.to_pylist()):
        yield f"{path}: row {index} (0-based)", row


_READERS = {".jsonl": _read_json, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}


def read_records(path: str | Path) -> Iterator[tuple[str, Any]]:
    """``(location, raw record)`` of one local file of any supported type, unvalidated."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; supported: {', '.join(SUFFIXES)}")
    return reader(path)


def read_file(path: str | Path) -> datasets.Dataset:
    """Load and validate every row of one local file."""
    rows = [validate_row(raw, where) for where, raw in read_records(path)]
    if not rows:
        raise DataError(f"{path}: no rows")
    log.info("loaded %d rows from %s", len(rows), path)
    return rows_to_dataset(rows)


def split_file(folder: Path, split: str) -> Path:
    """The file in `folder` whose stem names `split` (aliases allowed), e.g. ``val.parquet``."""
    candidates = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
    by_stem: dict[str, list[Path]] = {}
    for candidate in candidates:
        by_stem.setdefault(candidate.stem.lower(), []).append(candidate)
    for stem in SPLIT_ALIASES.get(split, (split,)):
        found = by_stem.get(stem, [])
        if len(found) > 1:
            raise DataError(f"{folder}: several files for split {split!r}: {[p.name for p in found]}")
        if found:
            return found[0]
    names = [p.name for p in sorted(folder.iterdir())]
    wanted = [f"{stem}{{{','.join(SUFFIXES)}}}" for stem in SPLIT_ALIASES.get(split, (split,))]
    raise DataError(f"{folder}: no file for split {split!r} (looked for {', '.join(wanted)}); found: {names}")


# ----------------------------------------------------------------------------- hub


def _is_hub_name(source: str) -> bool:
    return bool(_HUB_NAME.match(source)) and Path(source).suffix.lower() not in SUFFIXES


def load_hub(name: str, split: str) -> datasets.Dataset:
    """`datasets.load_dataset(name, split=split)`, validated; needs the Hugging Face hub."""
    try:
        raw = datasets.load_dataset(name, split=split)
    except ValueError as exc:  # datasets raises ValueError for a split the dataset lacks
        raise DataError(f"{name}: no split {split!r} ({exc})") from exc
    except OSError as exc:  # ConnectionError, TimeoutError, missing dataset: all OSError
        raise DataError(
            f"{name}[{split}]: the Hugging Face hub is unreachable or the dataset is missing ({exc}); "
            "pass a local path (.jsonl/.json/.parquet/.csv file or a folder of split files) "
            "or 'embedded' instead"
        ) from exc
    rows = [validate_row(raw_row, f"{name}[{split}]: row {i} (0-based)") for i, raw_row in enumerate(raw)]
    return rows_to_dataset(rows)


# ----------------------------------------------------------------------------- entry point


def _subsample(ds: datasets.Dataset, limit: int | None, seed: int) -> datasets.Dataset:
    """A seeded random subset of `limit` rows, kept in their original order."""
    if limit is not None and limit < 1:
        raise DataError(f"limit must be >= 1, got {limit}")
    if limit is None or limit >= len(ds):
        return ds
    keep = np.sort(np.random.default_rng(seed).choice(len(ds), size=limit, replace=False))
    return ds.select(keep.tolist())


def load_helpsteer(
    source: str | os.PathLike[str], split: str = "train", *, limit: int | None = None, seed: int = 0
) -> datasets.Dataset:
    """Load one split of HelpSteer-format rows as a validated Dataset.

    `source` is ``"embedded"`` (offline stdlib-docstring set, see
    :mod:`fedgate.data.embedded`), a local file or folder, or a hub name such as
    ``"nvidia/HelpSteer2"``. For a single file, `split` is ignored. `limit` keeps a
    seeded random subset (order preserved); `seed` also seeds the embedded build.
    Columns: prompt, response, the five attributes (int 0-4), domain, kind.
    """
    source = os.fspath(source)  # a pathlib.Path works too
    if source == "embedded":
        if split not in SPLITS:
            raise DataError(f"embedded: unknown split {split!r}; valid: {list(SPLITS)}")
        ds = build_embedded_dataset(seed)[split]
    elif Path(source).is_dir():
        ds = read_file(split_file(Path(source), split))
    elif Path(source).exists() or not _is_hub_name(source):
        ds = read_file(source)
    else:
        ds = load_hub(source, split)
    return _subsample(ds, limit, seed)
