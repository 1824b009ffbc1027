"""Harvest documentation text that ships with the interpreter: stdlib docstrings and
``pydoc_data`` topics. This is the raw material of the embedded dataset.

Determinism: modules are visited in sorted order, members in sorted order, and nothing
iterates a set or depends on ``hash()``. What a process has already imported (Ray, Flower,
torch) changes what the stdlib modules look like, so :func:`harvest_isolated` runs the
harvest in a fresh interpreter and caches the result on disk: every process of a federation
(server, clients, simulation actors) then reads the very same documents.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib
import inspect
import json
import logging
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)

# Modules with import-time side effects (opening a browser, printing, starting a REPL,
# touching the terminal), GUI toolkits, test suites and deprecated build tooling.
SKIP_MODULES: frozenset[str] = frozenset(
    {
        "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test", "tests",
        "lib2to3", "ensurepip", "venv", "distutils", "readline", "rlcompleter", "encodings",
        "pydoc_data", "__main__",
    }
)
MAX_PACKAGE_DEPTH = 2  # e.g. xml.etree.ElementTree
# Display names for implementation modules that users know under another name.
MODULE_ALIASES: dict[str, str] = {"posixpath": "os.path", "posix": "os"}

MIN_CHARS = 120
MIN_SENTENCES = 2

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'`(\[*])")
_SIGNATURE = re.compile(r"^(class\s+)?[\w.\[\]]+\(.*\)\s*(-+>.*)?$")
_HEADING_RULE = re.compile(r"^[*=\-~^]{3,}\s*$")
_VERSION_NOTE = re.compile(r"^(New|Changed|Deprecated) in version", re.IGNORECASE)


@dataclass(frozen=True)
class Doc:
    """One documented object: the prompt subject and its cleaned reference text."""

    name: str  # shown in the prompt, e.g. "json.dumps" or 'The "with" statement'
    short: str  # the object's own name, e.g. "dumps" (used for name swaps)
    module: str  # defining module as displayed, e.g. "os.path"; "" for topics
    family: str  # split unit: top-level package, or "topics:<letter>"
    what: str  # "function" | "class" | "method" | "module" | "topic"
    text: str  # cleaned, capped reference answer


def split_sentences(text: str) -> list[str]:
    """Split prose into sentences (heuristic: end mark, space, capital/digit/quote)."""
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def _drop_intro(paragraph: list[str]) -> None:
    """Remove a paragraph's closing sentence if it introduces a removed example (it ends
    in ':' or mid-sentence, e.g. "... is equivalent to")."""
    sentences = split_sentences(" ".join(paragraph))
    if sentences and not sentences[-1].endswith((".", "!", "?")):
        sentences.pop()
    paragraph[:] = [" ".join(sentences)] if sentences else []


def clean_docstring(raw: str, *, drop_indented: bool = False) -> str:
    """Prose of a docstring on one line: no signatures, doctests, code blocks or headings.

    Indented blocks are dropped when `drop_indented` (pydoc topics: grammar and code) or
    when they follow a paragraph ending in "::" or an "example:" line; the sentence that
    introduced a dropped block goes with it.
    """
    paragraphs: list[list[str]] = [[]]
    in_doctest = False
    in_block = False
    for line in inspect.cleandoc(raw).splitlines():
        stripped = line.strip()
        if not stripped:
            in_doctest = False
            if paragraphs[-1]:
                paragraphs.append([])
            continue
        if stripped.startswith(">>>") or in_doctest:
            in_doctest = True  # a doctest runs until the next blank line
            continue
        indented = line.startswith(("   ", "\t"))
        if not indented:
            in_block = False
        elif not in_block:
            previous = next((p for p in reversed(paragraphs) if p), [])
            intro = previous[-1].lower() if previous else ""
            in_block = drop_indented or intro.endswith("::") or (intro.endswith(":") and "example" in intro)
            if in_block and previous:
                _drop_intro(previous)
                paragraphs.append([])
        if in_block:
            continue
        if _SIGNATURE.match(stripped) or _HEADING_RULE.match(stripped) or _VERSION_NOTE.match(stripped):
            continue
        if stripped == "--":  # argument-clinic separator
            continue
        paragraphs[-1].append(stripped)
    text = " ".join(" ".join(p) for p in paragraphs if p)
    text = re.sub(r"\\\s", " ", text.replace("::", ":"))  # drop line-continuation backslashes
    return re.sub(r"\s+", " ", text).strip()


def cap_text(text: str, max_chars: int) -> str:
    """Whole leading sentences totalling at most `max_chars` (at least one sentence)."""
    sentences = split_sentences(text)
    out: list[str] = []
    total = 0
    for sentence in sentences:
        extra = len(sentence) + (1 if out else 0)
        if out and total + extra > max_chars:
            break
        out.append(sentence)
        total += extra
    return " ".join(out)


def usable(text: str) -> bool:
    """Long enough and multi-sentence: a real explanation, not a one-liner."""
    return len(text) >= MIN_CHARS and len(split_sentences(text)) >= MIN_SENTENCES


# ----------------------------------------------------------------------------- modules


def _import(name: str) -> ModuleType | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecated modules warn on import
            return importlib.import_module(name)
    except Exception as exc:  # platform-specific modules fail to import: skip them
        log.debug("skipping module %s: %s", name, exc)
        return None


def stdlib_modules() -> list[ModuleType]:
    """Importable public stdlib modules and their public submodules, in sorted order."""
    found: list[ModuleType] = []

    def visit(name: str, depth: int) -> None:
        if any(part.startswith("_") or part in SKIP_MODULES for part in name.split(".")):
            return
        module = _import(name)
        if module is None:
            return
        found.append(module)
        if depth < MAX_PACKAGE_DEPTH and hasattr(module, "__path__"):
            for info in sorted(pkgutil.iter_modules(module.__path__), key=lambda i: i.name):
                visit(f"{name}.{info.name}", depth + 1)

    for name in sorted(sys.stdlib_module_names):
        visit(name, 0)
    log.info("documentation source: %d stdlib modules imported (modules that fail to import on this "
             "platform are skipped; see debug log)", len(found))
    return found


def _defined_in(obj: Any, module: ModuleType, exported: bool) -> bool:
    """Whether `obj` belongs to `module` (not merely imported into it)."""
    owner = getattr(obj, "__module__", None)
    if owner == module.__name__:
        return True
    # C accelerators (heapq -> _heapq) count when the module exports the name.
    return exported and isinstance(owner, str) and owner.lstrip("_") == module.__name__.lstrip("_")


def _member(module: ModuleType, attr: str) -> Any:
    """`module.attr`, but the interpreter's original for hooks that tools replace
    (pytest and IPython swap sys.unraisablehook, sys.excepthook, threading.excepthook, ...)."""
    original = getattr(module, f"__{attr}__", None) if attr.endswith("hook") else None
    return original if callable(original) else getattr(module, attr, None)


def _own_doc(obj: Any) -> str | None:
    doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    return doc if isinstance(doc, str) else None


def module_docs(module: ModuleType, max_chars: int, seen: set[int]) -> list[Doc]:
    """Docs of a module itself, its public functions and classes, and their methods."""
    display = MODULE_ALIASES.get(module.__name__, module.__name__)
    family = display.split(".")[0]
    docs: list[Doc] = []

    def add(name: str, short: str, what: str, raw: str | None) -> None:
        if not raw:
            return
        text = clean_docstring(raw)
        if usable(text):
            text = cap_text(text, max_chars)
            if usable(text):
                docs.append(Doc(name, short, display, family, what, text))

    add(display, display.split(".")[-1], "module", _own_doc(module))
    exported = getattr(module, "__all__", None)
    exported_names = sorted(n for n in exported if isinstance(n, str)) if isinstance(exported, (list, tuple)) else []
    names = exported_names or sorted(n for n in dir(module) if not n.startswith("_"))
    for attr in names:
        obj = _member(module, attr)
        if obj is None or id(obj) in seen or not (inspect.isclass(obj) or callable(obj)):
            continue
        if inspect.ismodule(obj) or not _defined_in(obj, module, attr in exported_names):
            continue
        seen.add(id(obj))
        what = "class" if inspect.isclass(obj) else "function"
        add(f"{display}.{attr}", attr, what, _own_doc(obj))
        if not inspect.isclass(obj):
            continue
        for member_name, member in obj.__dict__.items():  # definition order: deterministic
            function = getattr(member, "__func__", member)
            if member_name.startswith("_") or not callable(function):
                continue
            if getattr(function, "__module__", obj.__module__) not in (obj.__module__, None):
                continue  # patched in by a third-party library (e.g. transformers' Logger.warning_once)
            if id(member) in seen:
                continue
            seen.add(id(member))
            add(f"{display}.{attr}.{member_name}", member_name, "method", _own_doc(member))
    return docs


# ----------------------------------------------------------------------------- topics


def _topic_sections(key: str, body: str) -> list[tuple[str, str]]:
    """Split a pydoc topic into (title, raw text) sections at its underlined headings."""
    lines = body.splitlines()
    sections: list[tuple[str, list[str]]] = []
    title = key
    current: list[str] = []
    for index, line in enumerate(lines):
        next_line = lines[index + 1] if index + 1 < len(lines) else ""
        if line.strip() and _HEADING_RULE.match(next_line) and len(next_line.strip()) >= len(line.strip()) - 2:
            if current:
                sections.append((title, current))
            title, current = line.strip(), []
            continue
        current.append(line)
    if current:
        sections.append((title, current))
    return [(t, "\n".join(body_lines)) for t, body_lines in sections]


def topic_docs(max_chars: int) -> list[Doc]:
    """Docs from ``pydoc_data.topics``: one per section of each language topic."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        return []
    docs: list[Doc] = []
    seen_titles: set[str] = set()
    for key in sorted(topics):
        family = f"topics:{key[0].lower()}"
        for title, raw in _topic_sections(key, topics[key]):
            text = clean_docstring(raw, drop_indented=True)
            if not usable(text) or title.lower() in seen_titles:
                continue
            text = cap_text(text, max_chars)
            if usable(text):
                seen_titles.add(title.lower())
                docs.append(Doc(title, key, "", family, "topic", text))
    return docs


def harvest(max_chars: int) -> list[Doc]:
    """All usable documents, exact-duplicate texts removed (first occurrence kept)."""
    seen_objects: set[int] = set()
    docs: list[Doc] = []
    for module in stdlib_modules():
        docs.extend(module_docs(module, max_chars, seen_objects))
    docs.extend(topic_docs(max_chars))
    unique: list[Doc] = []
    seen_texts: set[str] = set()
    for doc in docs:
        if doc.text not in seen_texts:  # membership only: set order never matters
            seen_texts.add(doc.text)
            unique.append(doc)
    log.info("harvested %d documents (%d before exact dedup)", len(unique), len(docs))
    return unique


# ----------------------------------------------------------------------------- isolation


def cache_path(max_chars: int) -> Path:
    """Where the harvest for this interpreter, this harvesting code and ``max_chars`` lives
    (``$FEDGATE_CACHE_DIR``, default ``~/.cache/fedgate``)."""
    key = hashlib.sha256(f"{sys.version}|{max_chars}|".encode() + Path(__file__).read_bytes()).hexdigest()[:16]
    base = os.environ.get("FEDGATE_CACHE_DIR") or str(Path.home() / ".cache" / "fedgate")
    return Path(base) / f"stdlib-docs-py{sys.version_info.major}{sys.version_info.minor}-{key}.json"


def harvest_isolated(max_chars: int) -> list[Doc]:
    """:func:`harvest` as a fresh interpreter sees it, cached on disk (see module docstring)."""
    path = cache_path(max_chars)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        path = Path(tempfile.gettempdir()) / "fedgate" / path.name
        path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        cmd = [sys.executable, "-m", "fedgate.data.docsource", "--max-chars", str(max_chars), "--out", str(tmp)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise RuntimeError(f"harvesting stdlib documentation failed ({' '.join(cmd)}):\n{done.stderr[-2000:]}")
        os.replace(tmp, path)  # atomic: concurrent clients write identical files
        log.info("stdlib documentation harvested in a fresh interpreter; cached at %s", path)
    return [Doc(**d) for d in json.loads(path.read_text())]


def _main() -> None:
    parser = argparse.ArgumentParser(description="Harvest stdlib documentation to a JSON file.")
    parser.add_argument("--max-chars", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    docs = harvest(args.max_chars)
    Path(args.out).write_text(json.dumps([dataclasses.asdict(d) for d in docs]))


if __name__ == "__main__":
    _main()
