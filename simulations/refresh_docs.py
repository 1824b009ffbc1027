"""Refresh the results tables in docs/ from the run folders that produced them.

    python -m simulations.refresh_docs                 # every docs/*.md and README.md
    python -m simulations.refresh_docs docs/studies.md --check   # list stale tables, change nothing

A table that a study or benchmark wrote (``results.md``, ``recovery.md``, ``per_round.md``,
...) is pasted into a document between two markers naming its source file, relative to
the repository root:

    <!-- table: runs/study-noniid-r4/results.md -->
    | variant | ... |
    <!-- /table -->

Rerunning the study (or ``python -m simulations.report DIR``) rewrites the source; this command copies it
into every document that shows it. A source named ``fedgate.strategies`` is not a file: it is
the table of the registered strategies (``fedgate strategies``). A source that is missing here (``runs/`` is not in the
repository; another machine made it) leaves its table as it is and is listed. ``--check``
exits 1 when a table differs from its source.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from fedgate import strategies

REPO = Path(__file__).resolve().parents[1]
GENERATED = {"fedgate.strategies": lambda: strategies.table() + "\n"}  # tables built from code, not files
BLOCK = re.compile(r"(<!-- table: (?P<source>[^\s>]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.DOTALL)
OPENING = re.compile(r"<!-- table: [^\s>]+ -->$")


def refresh(text: str, root: Path) -> tuple[str, list[str], list[str]]:
    """``text`` with every marked table replaced by its source's current content; also the
    sources that changed and those that are missing."""
    changed: list[str] = []
    missing: list[str] = []

    def replace(m: re.Match) -> str:
        source = m.group("source")
        path = root / source
        if source in GENERATED:
            body = GENERATED[source]()
        elif path.is_file():
            body = path.read_text()
            body = body if body.endswith("\n") else body + "\n"
        else:
            missing.append(source)
            return m.group(0)
        if body != m.group("body"):
            changed.append(source)
        return m.group(1) + body + m.group(4)

    _check_markers(text)
    return BLOCK.sub(replace, text), changed, missing


def _check_markers(text: str) -> None:
    """Every opening marker closed before the next one opens; raises naming the line."""
    opened = None
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("<!-- table: "):
            if opened is not None:
                raise ValueError(f"line {opened}: table marker not closed by '<!-- /table -->' before line {number}")
            if not OPENING.match(line):
                raise ValueError(f"line {number}: expected '<!-- table: PATH -->', got {line!r}")
            opened = number
        elif line.startswith("<!-- /table -->"):
            if opened is None:
                raise ValueError(f"line {number}: '<!-- /table -->' without a table marker before it")
            opened = None
    if opened is not None:
        raise ValueError(f"line {opened}: table marker not closed by '<!-- /table -->'")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("docs", nargs="*", type=Path, help="documents (default: docs/*.md and README.md)")
    parser.add_argument("--root", type=Path, default=REPO, help="what the sources are relative to")
    parser.add_argument("--check", action="store_true", help="list stale tables and exit 1 if any; write nothing")
    args = parser.parse_args(argv)
    docs = args.docs or sorted((args.root / "docs").glob("*.md")) + [args.root / "README.md"]
    stale = 0
    for doc in docs:
        try:
            new, changed, missing = refresh(doc.read_text(), args.root)
        except ValueError as e:
            print(f"{doc}: {e}", file=sys.stderr)
            return 2
        for source in missing:
            print(f"{doc}: kept the table from {source} (not found under {args.root})")
        for source in changed:
            print(f"{doc}: {'stale' if args.check else 'refreshed'}: {source}")
        stale += len(changed)
        if changed and not args.check:
            doc.write_text(new)
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
