"""Near-duplicate removal by token Jaccard similarity, with MinHash banding to stay fast.

Candidates come from MinHash signatures over word-token sets (locality-sensitive
banding); each candidate pair is then checked with the exact token Jaccard, so the cut
is exact and the banding only saves time. Token hashes use CRC32, never ``hash()``, so
results do not depend on PYTHONHASHSEED.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import numpy as np

NUM_PERMUTATIONS = 64
BAND_ROWS = 4  # 16 bands of 4: a pair at Jaccard 0.8 becomes a candidate w.p. > 0.999
_PRIME = (1 << 61) - 1
_TOKEN = re.compile(r"\w+")


def tokens(text: str) -> frozenset[str]:
    """Lower-cased word tokens of `text` as a set."""
    return frozenset(_TOKEN.findall(text.lower()))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    """|a & b| / |a | b| (1.0 for two empty sets)."""
    union = len(a | b)
    return len(a & b) / union if union else 1.0


def _signature(token_set: frozenset[str], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if not token_set:
        return np.zeros(len(a), dtype=np.uint64)
    hashed = np.array(sorted(zlib.crc32(t.encode("utf-8")) for t in token_set), dtype=np.uint64)
    # (permutations, tokens) universal hashes, min over tokens; values stay below 2**61.
    products = (a[:, None] * hashed[None, :] + b[:, None]) % np.uint64(_PRIME)
    return products.min(axis=1)


def keep_mask(texts: Sequence[str], threshold: float = 0.8) -> list[bool]:
    """True for each text kept: a text is dropped when its token Jaccard with an
    earlier kept text exceeds `threshold`. Order matters: earlier texts win."""
    rng = np.random.default_rng(20240601)  # fixed: the permutations are not a knob
    a = rng.integers(1, 1 << 28, size=NUM_PERMUTATIONS, dtype=np.uint64)
    b = rng.integers(0, 1 << 28, size=NUM_PERMUTATIONS, dtype=np.uint64)
    buckets: dict[bytes, list[int]] = {}
    kept_tokens: list[frozenset[str]] = []
    keep: list[bool] = []
    for text in texts:
        token_set = tokens(text)
        signature = _signature(token_set, a, b)
        keys = [bytes([band]) + signature[start : start + BAND_ROWS].tobytes()
                for band, start in enumerate(range(0, NUM_PERMUTATIONS, BAND_ROWS))]
        candidates = sorted({i for key in keys for i in buckets.get(key, ())})
        duplicate = any(jaccard(token_set, kept_tokens[i]) > threshold for i in candidates)
        keep.append(not duplicate)
        if not duplicate:
            for key in keys:
                buckets.setdefault(key, []).append(len(kept_tokens))
            kept_tokens.append(token_set)
    return keep
