"""Reading text data files so that a bad file names itself: undecodable bytes give the file,
the line and the byte offset; a broken gzip stream gives the file; malformed JSON gives the
file and line."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fedgate.data.schema import DataError


def _opener(path: Path):
    return gzip.open if path.name.lower().endswith(".gz") else open


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of a UTF-8 text file, gzip-compressed when its name ends in
    ``.gz``."""
    gz = _opener(path) is gzip.open
    offset = 0
    try:
        with _opener(path)(path, "rb") as handle:
            for line_no, raw in enumerate(handle, start=1):
                try:
                    yield line_no, raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(f"{path}:{line_no}: not UTF-8 text (byte offset {offset + exc.start}"
                                    f"{' of the decompressed text' if gz else ''}: "
                                    f"{raw[exc.start:exc.start + 1]!r})") from None
                offset += len(raw)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: not a readable gzip file ({exc})") from None


def read_text(path: Path) -> str:
    """The whole of a UTF-8 text file (gzip-compressed when named ``.gz``)."""
    return "".join(line for _, line in text_lines(path))


def json_records(path: Path) -> Iterator[tuple[str, Any]]:
    """``(location, record)`` of a JSON Lines file (blank lines allowed; location
    ``file:line``) or of a file holding one JSON array (location ``file: row N (0-based)``)."""
    lines = text_lines(path)
    first = next(lines, None)
    if first is None:
        return
    if first[1].lstrip().startswith("["):
        text = first[1] + "".join(line for _, line in lines)
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
        for index, row in enumerate(rows):
            yield f"{path}: row {index} (0-based)", row
        return
    for line_no, line in _chain(first, lines):
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})") from None


def _chain(first: tuple[int, str], rest: Iterator[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    yield first
    yield from rest
