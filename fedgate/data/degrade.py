"""Degradations that turn a reference answer into a worse one, each with a known flaw.

Each function takes the reference text (and a seeded ``random.Random``) and returns the
degraded text, or ``None`` when the text does not qualify (too few sentences, too few
swappable words, ...). Labels are assigned in :mod:`fedgate.data.embedded`.

The shortcut-blunting choices live here: some truncated
answers get a full stop, padding mixes varied boilerplate with exact and reworded
repetition, shuffling always moves the summary sentence.
"""

from __future__ import annotations

import random
import re

from fedgate.data.docsource import split_sentences

CONCISE_MIN_COVERAGE = 0.55
TRUNCATE_RANGE = (0.35, 0.65)
TRUNCATED_FULL_STOP = 0.5  # share of truncated answers that get a closing "."
# Padded length / original length: ~2x on average (the first design said ~2.5x); 2x keeps
# the length-only AUC near 0.54 here, since concise answers (aligned) are short too.
PAD_FACTOR_RANGE = (1.5, 2.5)
CORRUPT_SWAPS = (3, 6)
SHUFFLE_MIN_SENTENCES = 3

# One word per pair, both directions; capitalised forms are derived.
_OPPOSITE_PAIRS: tuple[tuple[str, str], ...] = (
    ("true", "false"), ("add", "remove"), ("adds", "removes"), ("added", "removed"),
    ("before", "after"), ("first", "last"), ("minimum", "maximum"), ("min", "max"),
    ("increase", "decrease"), ("increases", "decreases"), ("return", "ignore"),
    ("returns", "ignores"), ("returned", "ignored"), ("input", "output"), ("read", "write"),
    ("reads", "writes"), ("start", "end"), ("open", "close"), ("opened", "closed"),
    ("lower", "upper"), ("left", "right"), ("enable", "disable"), ("enabled", "disabled"),
    ("always", "never"), ("include", "exclude"), ("success", "failure"),
    ("smaller", "larger"), ("less", "greater"), ("positive", "negative"),
    ("synchronous", "asynchronous"), ("absolute", "relative"), ("encode", "decode"),
    ("client", "server"), ("next", "previous"), ("above", "below"), ("inside", "outside"),
    ("can", "cannot"), ("ascending", "descending"), ("append", "prepend"),
    ("valid", "invalid"), ("local", "global"), ("send", "receive"), ("empty", "full"),
)
OPPOSITES: dict[str, str] = {
    word: other
    for a, b in _OPPOSITE_PAIRS
    for x, y in ((a, b), (b, a))
    for word, other in ((x, y), (x.capitalize(), y.capitalize()))
}
# Replacements of very common words ("Return ...", "can"): used sparingly, see corrupt().
_FREQUENT_SWAPS = frozenset({"ignore", "ignores", "ignored", "cannot"})
_WORD = re.compile(r"\b[A-Za-z]+\b")
_NUMBER = re.compile(r"\b\d+\b")

# Padding material: varied so that no single phrase marks a padded answer.
_FILLER = (
    "This is something that comes up often when working with {name}.",
    "It helps to keep this in mind when reading code that uses {name}.",
    "Knowing how {name} behaves can save time when debugging.",
    "The behavior described here is part of the documented interface.",
    "The same idea appears in several other parts of the standard library.",
    "It is a good idea to check the documentation of {module} for related functionality.",
    "Many programs rely on {name} in exactly this way.",
    "This is one of the details that is easy to overlook.",
    "In practice, most code only needs the common case described above.",
    "This is worth remembering when writing your own code.",
    "The documentation of {module} describes this in more detail.",
    "Using {name} correctly makes programs easier to maintain.",
    "This is the main thing to know about {name}.",
    "Other languages offer similar features, but the details differ.",
    "It can be useful to experiment with {name} in the interactive interpreter.",
    "These points apply to all recent versions of Python.",
    "Several related helpers exist in {module} as well.",
    "That is the essential behavior of {name}.",
)
_REWORD = ("To repeat, {s}", "In other words, {s}", "Again, {s}", "As noted above, {s}",
           "Put differently, {s}", "Note that {s}", "Remember that {s}")


def concise(text: str) -> str | None:
    """The shortest run of leading sentences covering >= 55% of the text (not all of it)."""
    sentences = split_sentences(text)
    for count in range(1, len(sentences)):
        head = " ".join(sentences[:count])
        if len(head) >= CONCISE_MIN_COVERAGE * len(text):
            return head
    return None


def truncate(text: str, rng: random.Random) -> str | None:
    """Cut mid-sentence at 35-65% of the length, on a word boundary; sometimes add a "."."""
    cut = int(len(text) * rng.uniform(*TRUNCATE_RANGE))
    cut = text.rfind(" ", 0, cut)
    if cut <= 0:
        return None
    head = text[:cut].rstrip(" ,;:-(")
    if head.endswith((".", "!", "?")):  # landed on a sentence end: drop one more word
        head = head[: head.rfind(" ")].rstrip(" ,;:-(") if " " in head else ""
    if len(head) < 20:
        return None
    return head + "." if rng.random() < TRUNCATED_FULL_STOP else head


def _lower_first(sentence: str) -> str:
    """Lower-case a plain capitalised first word ("Return" -> "return", not "JSON")."""
    first = sentence.split(" ", 1)[0]
    if first.isalpha() and first[1:].islower():
        return sentence[0].lower() + sentence[1:]
    return sentence


def pad(text: str, name: str, module: str, rng: random.Random) -> str:
    """Stretch by a factor drawn from PAD_FACTOR_RANGE (about 2x) with filler sentences and
    repeated (exact or reworded) sentences, scattered through the answer, not only appended."""
    sentences = split_sentences(text)
    target = len(text) * rng.uniform(*PAD_FACTOR_RANGE)
    fillers = [f.format(name=name, module=module or "the standard library") for f in _FILLER]
    rng.shuffle(fillers)
    exact_repeats = rng.random() < 0.5  # half the padded answers repeat sentences verbatim
    out = list(sentences)
    length = len(text)
    while length < target:
        if fillers and rng.random() < 0.5:
            extra = fillers.pop()
        else:
            sentence = rng.choice(sentences)
            extra = sentence if exact_repeats else rng.choice(_REWORD).format(s=_lower_first(sentence))
        out.insert(rng.randint(1, len(out)), extra)
        length += len(extra) + 1
    return " ".join(out)


def shuffle(text: str, rng: random.Random) -> str | None:
    """Sentences in a new order, the first (summary) sentence always moved."""
    sentences = split_sentences(text)
    if len(sentences) < SHUFFLE_MIN_SENTENCES:
        return None
    order = list(range(len(sentences)))
    rng.shuffle(order)
    if order[0] == 0:
        other = rng.randrange(1, len(order))
        order[0], order[other] = order[other], order[0]
    return " ".join(sentences[i] for i in order)


def _swap_sites(text: str, short: str, siblings: list[str]) -> list[tuple[int, int, str, str]]:
    """(start, end, kind, replacement) for every swappable word, number or own name; sites
    never overlap (the own-name swap wins over an opposite on the same span)."""
    sites: list[tuple[int, int, str, str]] = []
    for match in _WORD.finditer(text):
        if match.group() in OPPOSITES:
            sites.append((match.start(), match.end(), "opposite", OPPOSITES[match.group()]))
    for match in _NUMBER.finditer(text):
        sites.append((match.start(), match.end(), "number", ""))
    if len(short) >= 3 and siblings:
        for match in re.finditer(rf"\b{re.escape(short)}\b", text):
            sites.append((match.start(), match.end(), "name", ""))
    # One site per stretch of text: the object's own name can also be an opposite word
    # ("open", "add"); two swaps of one span would garble it and be counted twice.
    kept: list[tuple[int, int, str, str]] = []
    for site in sorted(sites, key=lambda s: (s[0], s[2] != "name")):
        if not kept or site[0] >= kept[-1][1]:
            kept.append(site)
    return kept


def _new_number(digits: str, rng: random.Random) -> str:
    value = int(digits)
    changed = value + rng.choice([-1, 1]) * rng.randint(1, max(1, value // 2 + 1))
    return str(changed if changed >= 0 and changed != value else value + 1)


def corrupt(text: str, short: str, siblings: list[str], rng: random.Random) -> tuple[str, int] | None:
    """Swap >= 3 opposites / numbers / the object's own name (for a sibling's name).

    Returns the corrupted text and the number of swaps, or None if fewer than 3 sites.
    """
    sites = _swap_sites(text, short, siblings)
    if len(sites) < CORRUPT_SWAPS[0]:
        return None
    # Most docstrings start with "Return" and say "can": return->ignore and can->cannot
    # swaps only make up the minimum, or those words alone would mark corrupted answers.
    common = [site for site in sites if site[3].lower() in _FREQUENT_SWAPS]
    other = [site for site in sites if site not in common]
    chosen = rng.sample(other, min(len(other), rng.randint(*CORRUPT_SWAPS)))
    chosen += rng.sample(common, max(0, CORRUPT_SWAPS[0] - len(chosen)))
    chosen.sort()
    sibling = rng.choice(siblings) if siblings else short
    pieces: list[str] = []
    position = 0
    for start, end, kind, replacement in chosen:
        if kind == "number":
            replacement = _new_number(text[start:end], rng)
        elif kind == "name":
            replacement = sibling
        pieces.append(text[position:start])
        pieces.append(replacement)
        position = end
    pieces.append(text[position:])
    return "".join(pieces), len(chosen)
