"""The embedded offline dataset: HelpSteer-format rows built from stdlib documentation.

Prompts ask about a documented object ("What does `json.dumps` do?") or a language topic
("Explain the "with" statement in Python."). The reference answer is the cleaned
docstring (or pydoc topic section), capped near ``max_response_chars`` at a sentence
boundary. Each prompt gets its reference answer plus degraded versions of it.

**The labels are rule-derived from the degradation applied, not human judgements.** They
follow this table, then each attribute independently moves +-1 with probability
``label_noise`` (clipped to 0-4):

| kind                    | H | Corr | Coh | Cx          | V           | share |
|-------------------------|---|------|-----|-------------|-------------|-------|
| real                    | 4 | 4    | 4   | 1-3 by len  | 1-3 by len  | 19%   |
| concise                 | 3 | 4    | 4   | max(0,Cx-1) | max(1,V-1)  | 12%   |
| offtopic_other_family   | 0 | 1    | 3   | donor's     | donor's     | 13%   |
| offtopic_same_family    | 1 | 1    | 3   | donor's     | donor's     | 5%    |
| truncated               | 2 | 3    | 2   | max(0,Cx-1) | 1           | 19%   |
| padded                  | 2 | 3    | 2   | Cx          | 4           | 19%   |
| shuffled                | 2 | 3    | 1   | Cx          | V           | 7%    |
| corrupted               | 1 | 0/1  | 3   | Cx          | V           | 7%    |

- real: the reference text. Its helpfulness is 4 whatever its length.
- concise: the shortest run of leading sentences covering >= 55% of the text.
- offtopic_*: the reference answer of another prompt whose length is within +-25%,
  from another module family / the same family, always from the same split.
- truncated: cut mid-sentence at 35-65% of the length; half get a closing full stop.
- padded: stretched 1.5-2.5x (about 2x) with varied filler and exact or reworded
  repetition (equal share with truncated, so length alone says little).
- shuffled: texts with >= 3 sentences, the first (summary) sentence always moved.
- corrupted: 3-6 swaps of opposites (true/false, add/remove, first/last, ...), numbers,
  or the object's own name for a sibling's; correctness 0 with >= 5 swaps, else 1.
- Cx and V by length of the reference text: 1 below max_response_chars/3, 2 below
  2/3 of it, 3 above.

Near-duplicate reference texts (token Jaccard > 0.8) are removed first, then prompts are
split 80/10/10 by module family (domain), so no family or near-copy crosses splits.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import logging
import os
import random
import shutil
import sys
from pathlib import Path

import datasets

from fedgate.data import dedup, degrade, schema
from fedgate.data.dedup import keep_mask
from fedgate.data.docsource import Doc, cache_path, harvest_isolated
from fedgate.data.schema import ATTRIBUTES, rows_to_dataset

log = logging.getLogger(__name__)

SPLIT_FRACTIONS: dict[str, float] = {"train": 0.8, "validation": 0.1, "test": 0.1}
KINDS: tuple[str, ...] = (
    "real", "concise", "offtopic_other_family", "offtopic_same_family",
    "truncated", "padded", "shuffled", "corrupted",
)
SHARES: dict[str, float] = {
    "real": 0.19, "concise": 0.12, "offtopic_other_family": 0.13, "offtopic_same_family": 0.05,
    "truncated": 0.19, "padded": 0.19, "shuffled": 0.07, "corrupted": 0.07,
}
DONOR_LENGTH_TOLERANCE = 0.25
CORRUPT_ZERO_CORRECTNESS_SWAPS = 5

_TEMPLATES: dict[str, tuple[str, ...]] = {
    "function": ("What does `{name}` do?", "How do I use `{name}`?", "Explain `{name}` in Python.",
                 "What is `{name}` used for?", "Can you describe what `{name}` does?"),
    "method": ("What does the `{name}` method do?", "How do I use `{name}`?",
               "Explain the `{name}` method.", "What is `{name}` used for?"),
    "class": ("What is the `{name}` class?", "How is `{name}` used?",
              "Explain the `{name}` class in Python.", "What does `{name}` represent?"),
    "module": ("What is the `{name}` module for?", "Explain the `{name}` module.",
               "What does the `{name}` module provide?"),
    "topic": ("Explain {name} in Python.", "What should I know about {name} in Python?",
              "Can you describe {name}?"),
}


def length_bin(text: str, max_chars: int) -> int:
    """1-3 by length: the complexity and verbosity of a reference answer."""
    return 1 + (len(text) >= max_chars / 3) + (len(text) >= 2 * max_chars / 3)


def labels(kind: str, cx: int, v: int, swaps: int = 0) -> tuple[int, int, int, int, int]:
    """(helpfulness, correctness, coherence, complexity, verbosity) before label noise.

    `cx`/`v` are the length bins of the reference text (the donor's for off-topic rows).
    """
    table: dict[str, tuple[int, int, int, int, int]] = {
        "real": (4, 4, 4, cx, v),
        "concise": (3, 4, 4, max(0, cx - 1), max(1, v - 1)),
        "offtopic_other_family": (0, 1, 3, cx, v),
        "offtopic_same_family": (1, 1, 3, cx, v),
        "truncated": (2, 3, 2, max(0, cx - 1), 1),
        "padded": (2, 3, 2, cx, 4),
        "shuffled": (2, 3, 1, cx, v),
        "corrupted": (1, 0 if swaps >= CORRUPT_ZERO_CORRECTNESS_SWAPS else 1, 3, cx, v),
    }
    return table[kind]


_KEEP_CAPITALISED = frozenset({"Python", "None", "True", "False", "Unicode"})


def _prompt(doc: Doc, rng: random.Random) -> str:
    name = doc.name
    if doc.what == "topic":  # "Mapping Patterns" -> "Explain mapping patterns in Python."
        name = " ".join(
            w.lower() if w.isalpha() and w[1:].islower() and w not in _KEEP_CAPITALISED else w
            for w in name.split(" ")
        )
    return rng.choice(_TEMPLATES[doc.what]).format(name=name)


def split_families(docs: list[Doc], seed: int) -> dict[str, list[Doc]]:
    """Assign whole module families to splits, ~80/10/10 by document count.

    Families are visited in a seeded random order and each goes to the split that is
    least filled relative to its target; families too big for a small split go to train.
    """
    sizes: dict[str, int] = {}
    for doc in docs:
        sizes[doc.family] = sizes.get(doc.family, 0) + 1
    families = sorted(sizes)
    random.Random(f"families:{seed}").shuffle(families)
    total = len(docs)
    filled = {split: 0 for split in SPLIT_FRACTIONS}
    assignment: dict[str, str] = {}
    for family in families:
        allowed = [s for s, frac in SPLIT_FRACTIONS.items() if sizes[family] <= 0.5 * frac * total or s == "train"]
        split = min(allowed, key=lambda s: (filled[s] + sizes[family]) / SPLIT_FRACTIONS[s])
        assignment[family] = split
        filled[split] += sizes[family]
    return {split: [d for d in docs if assignment[d.family] == split] for split in SPLIT_FRACTIONS}


class _Donors:
    """Reference texts of one split, searchable by length for off-topic answers."""

    def __init__(self, docs: list[Doc]) -> None:
        self.by_length = sorted(docs, key=lambda d: (len(d.text), d.name))
        self.lengths = [len(d.text) for d in self.by_length]

    def pick(self, doc: Doc, same_family: bool, rng: random.Random) -> Doc | None:
        low = bisect.bisect_left(self.lengths, (1 - DONOR_LENGTH_TOLERANCE) * len(doc.text))
        high = bisect.bisect_right(self.lengths, (1 + DONOR_LENGTH_TOLERANCE) * len(doc.text))
        candidates = [
            d for d in self.by_length[low:high]
            if d is not doc and (d.family == doc.family) == same_family and d.short != doc.short
        ]
        return rng.choice(candidates) if candidates else None


OPTIONAL_KINDS: tuple[str, ...] = ("concise", "offtopic_other_family", "offtopic_same_family", "shuffled", "corrupted")


def _degraded(kind: str, doc: Doc, donors: _Donors, siblings: dict[str, list[str]],
              rng: random.Random) -> tuple[str, Doc, int] | None:
    """(response, doc whose length sets Cx/V, swaps) for an optional kind, or None when
    `doc` does not qualify (too short to shorten, too few sentences, no donor, ...)."""
    if kind == "concise":
        text = degrade.concise(doc.text)
        return None if text is None else (text, doc, 0)
    if kind in ("offtopic_other_family", "offtopic_same_family"):
        donor = donors.pick(doc, kind == "offtopic_same_family", rng)
        return None if donor is None else (donor.text, donor, 0)
    if kind == "shuffled":
        text = degrade.shuffle(doc.text, rng)
        return None if text is None else (text, doc, 0)
    if kind == "corrupted":
        others = [name for name in siblings.get(doc.module, []) if name != doc.short]
        result = degrade.corrupt(doc.text, doc.short, others, rng)
        return None if result is None else (result[0], doc, result[1])
    raise ValueError(f"not an optional kind: {kind!r}")


def _rows_for_split(docs: list[Doc], siblings: dict[str, list[str]], max_chars: int,
                    rng: random.Random) -> list[dict]:
    """Every kind of row for the documents of one split, in a seeded random order.

    Each prompt gets its real, truncated and padded answers; the optional kinds are
    drawn to hit their shares (SHARES relative to "real") among qualifying prompts.
    """
    donors = _Donors(docs)
    prompts = [_prompt(doc, rng) for doc in docs]
    rows: list[dict] = []

    def add(i: int, kind: str, response: str, source: Doc, swaps: int = 0) -> None:
        cx = v = length_bin(source.text, max_chars)
        rows.append({"prompt": prompts[i], "response": response,
                     **dict(zip(ATTRIBUTES, labels(kind, cx, v, swaps))),
                     "domain": docs[i].family, "kind": kind})

    for i, doc in enumerate(docs):
        truncated = degrade.truncate(doc.text, rng)
        add(i, "real", doc.text, doc)
        if truncated is not None:  # truncated and padded always come as a pair
            add(i, "truncated", truncated, doc)
            add(i, "padded", degrade.pad(doc.text, doc.name, doc.module, rng), doc)

    # Quotas per length bin, so that kinds needing long texts (shuffled, corrupted) do
    # not make length a cue; a second pass fills what a bin could not supply.
    bins = [length_bin(doc.text, max_chars) for doc in docs]
    for kind in OPTIONAL_KINDS:
        ratio = SHARES[kind] / SHARES["real"]
        wanted = round(ratio * len(docs))
        quota = {b: round(ratio * bins.count(b)) for b in sorted(set(bins))}
        order = list(range(len(docs)))
        rng.shuffle(order)
        made, tried = 0, set()
        for stratified in (True, False):
            for i in order:
                if made == wanted:
                    break
                if i in tried or (stratified and quota[bins[i]] <= 0):
                    continue
                tried.add(i)  # used, or not qualifying: either way not tried again
                result = _degraded(kind, docs[i], donors, siblings, rng)
                if result is not None:
                    add(i, kind, *result)
                    quota[bins[i]] -= 1
                    made += 1
        if made < wanted:
            log.info("kind %s: %d of %d wanted rows (not enough qualifying texts)", kind, made, wanted)
    rng.shuffle(rows)
    return rows


def _add_label_noise(rows: list[dict], rate: float, rng: random.Random) -> None:
    """In place: each attribute moves +-1 with probability `rate`, clipped to 0-4."""
    for row in rows:
        for name in ATTRIBUTES:
            if rng.random() < rate:
                row[name] = min(4, max(0, row[name] + rng.choice((-1, 1))))


def _siblings(docs: list[Doc]) -> dict[str, list[str]]:
    """Module -> sorted short names of its documented members (for name swaps)."""
    names: dict[str, set[str]] = {}
    for doc in docs:
        if doc.what != "topic":
            names.setdefault(doc.module, set()).add(doc.short)
    return {module: sorted(found) for module, found in names.items()}


@functools.lru_cache(maxsize=8)
def build_embedded_dataset(
    seed: int = 0, *, label_noise: float = 0.2, max_response_chars: int = 600
) -> datasets.DatasetDict:
    """Build the embedded dataset: splits train/validation/test, split by module family.

    Deterministic for given arguments (and interpreter); cached in-process and on disk
    (:func:`built_path`).
    """
    if not 0.0 <= label_noise <= 1.0:
        raise ValueError(f"label_noise must be in [0, 1], got {label_noise}")
    if max_response_chars < 200:
        raise ValueError(f"max_response_chars must be >= 200, got {max_response_chars}")
    harvested = harvest_isolated(max_response_chars)
    built = built_path(seed, label_noise, max_response_chars)
    if (built / "dataset_dict.json").is_file():
        try:
            # in memory (a few MB): a shuffle or select then writes no cache files into the shared folder
            return datasets.load_from_disk(str(built), keep_in_memory=True)
        except (OSError, ValueError) as e:  # a damaged folder: built again below, and replaced
            log.warning("embedded: cannot read %s (%s); building the dataset again", built, e)
            shutil.rmtree(built, ignore_errors=True)
    docs = [doc for doc, keep in zip(harvested, keep_mask([d.text for d in harvested])) if keep]
    log.info("embedded: %d documents, %d near-duplicates removed", len(docs), len(harvested) - len(docs))
    siblings = _siblings(docs)
    rng = random.Random(seed)
    noise_rng = random.Random(f"label-noise:{seed}")
    out = {}
    for split, split_docs in split_families(docs, seed).items():
        rows = _rows_for_split(split_docs, siblings, max_response_chars, rng)
        _add_label_noise(rows, label_noise, noise_rng)
        out[split] = rows_to_dataset(rows)
        log.info("embedded %s: %d prompts, %d rows", split, len(split_docs), len(rows))
    dataset = datasets.DatasetDict(out)
    _save(dataset, built)
    return dataset


def built_path(seed: int, label_noise: float, max_response_chars: int) -> Path:
    """Where the built dataset for these arguments is kept on disk, beside the harvest it was
    built from: a fresh process (every deployed ClientApp message) reads it in a fraction of
    a second instead of building it again (seconds). The name hashes the harvest's own cache
    name (interpreter and harvesting code), the arguments and the source of every module that
    turns documents into rows, so changed code or arguments never read stale rows."""
    harvest = cache_path(max_response_chars)
    h = hashlib.sha256(f"{harvest.name}|{seed}|{label_noise!r}|{max_response_chars}|".encode())
    for module in (sys.modules[__name__], dedup, degrade, schema):
        h.update(Path(module.__file__).read_bytes())
    return harvest.parent / f"embedded-{h.hexdigest()[:16]}"


def _save(dataset: datasets.DatasetDict, path: Path) -> None:
    """Write to a private name, then rename: a reader never sees half a folder, and of two
    processes building at once the second simply keeps the first's (identical) folder."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    bars = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # no "Saving the dataset" bars in every client's output
    try:
        dataset.save_to_disk(str(tmp))
        os.replace(tmp, path)
    except OSError as e:  # read-only or already written by another process: nothing lost
        log.debug("embedded: not kept at %s (%s)", path, e)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if bars:
            datasets.enable_progress_bars()

