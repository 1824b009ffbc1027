"""The embedded dataset: deterministic, split by family, labelled exactly by the table."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest

from fedgate.data import ATTRIBUTES, build_embedded_dataset, load_helpsteer
from fedgate.data.dedup import keep_mask
from fedgate.data.docsource import split_sentences
from fedgate.data.embedded import KINDS, length_bin
from fedgate.data.schema import COLUMNS, validate_row

MAX_CHARS = 600
REPO_ROOT = Path(__file__).resolve().parents[2]


def digest(dd: datasets.DatasetDict) -> str:
    h = hashlib.sha256()
    for split in dd:
        h.update(json.dumps({split: dd[split].to_dict()}, sort_keys=True).encode("utf-8"))
    return h.hexdigest()


@pytest.fixture(scope="module")
def noisy() -> datasets.DatasetDict:
    return build_embedded_dataset(0)


@pytest.fixture(scope="module")
def clean() -> datasets.DatasetDict:
    return build_embedded_dataset(0, label_noise=0.0)


def test_size_and_split_shares(noisy: datasets.DatasetDict) -> None:
    sizes = {split: len(ds) for split, ds in noisy.items()}
    total = sum(sizes.values())
    assert list(sizes) == ["train", "validation", "test"]
    assert 8000 <= total <= 12000, sizes
    assert 0.74 <= sizes["train"] / total <= 0.86, sizes
    for split in ("validation", "test"):
        assert 0.06 <= sizes[split] / total <= 0.14, sizes


def test_columns_and_every_row_passes_validation(noisy: datasets.DatasetDict) -> None:
    for split, ds in noisy.items():
        assert ds.column_names == list(COLUMNS)
        for i, row in enumerate(ds):
            assert validate_row(row, f"{split}:{i}") == row


def test_families_disjoint_across_splits(noisy: datasets.DatasetDict) -> None:
    families = {split: set(ds["domain"]) for split, ds in noisy.items()}
    assert families["train"].isdisjoint(families["validation"])
    assert families["train"].isdisjoint(families["test"])
    assert families["validation"].isdisjoint(families["test"])
    assert all(len(f) >= 20 for f in families.values())


def test_no_near_copy_of_a_train_answer_in_test(clean: datasets.DatasetDict) -> None:
    def reals(ds: datasets.Dataset) -> list[str]:
        return [r for r, k in zip(ds["response"], ds["kind"]) if k == "real"]

    train, test = reals(clean["train"]), reals(clean["test"])
    keep = keep_mask(train + test)
    assert all(keep[len(train):]), "a test reference answer has a near-copy (Jaccard > 0.8) in train"


def test_every_kind_present_with_documented_shares(noisy: datasets.DatasetDict) -> None:
    from fedgate.data.embedded import SHARES

    for split, ds in noisy.items():
        counts = Counter(ds["kind"])
        assert set(counts) == set(KINDS), split
        assert counts["truncated"] == counts["padded"] == counts["real"]
    counts = Counter(noisy["train"]["kind"])
    for kind in KINDS:
        share = counts[kind] / len(noisy["train"])
        assert abs(share - SHARES[kind]) < 0.02, (kind, share)


def test_labels_follow_the_table_without_noise(clean: datasets.DatasetDict) -> None:
    for split, ds in clean.items():
        rows = ds.to_list()
        real = {r["prompt"]: r for r in rows if r["kind"] == "real"}
        real_domain = {r["response"]: r["domain"] for r in real.values()}
        for row in rows:
            ref = real[row["prompt"]]["response"]
            b = length_bin(ref, MAX_CHARS)
            got = tuple(row[a] for a in ATTRIBUTES)
            kind = row["kind"]
            if kind == "real":
                assert got == (4, 4, 4, b, b)
            elif kind == "concise":
                assert got == (3, 4, 4, max(0, b - 1), max(1, b - 1))
                assert ref.startswith(row["response"]) and len(row["response"]) >= 0.55 * len(ref)
            elif kind.startswith("offtopic"):
                donor_bin = length_bin(row["response"], MAX_CHARS)
                same = kind == "offtopic_same_family"
                assert got == (1 if same else 0, 1, 3, donor_bin, donor_bin)
                assert (real_domain[row["response"]] == row["domain"]) == same  # donor from this split
                assert 0.75 * len(ref) <= len(row["response"]) <= 1.25 * len(ref)
            elif kind == "truncated":
                assert got == (2, 3, 2, max(0, b - 1), 1)
                assert len(row["response"]) <= 0.66 * len(ref)
            elif kind == "padded":
                assert got == (2, 3, 2, b, 4)
                assert len(row["response"]) >= 1.4 * len(ref)
            elif kind == "shuffled":
                assert got == (2, 3, 1, b, b)
                sentences = split_sentences(ref)
                assert len(sentences) >= 3 and not row["response"].startswith(sentences[0])
            elif kind == "corrupted":
                assert got[0] == 1 and got[1] in (0, 1) and got[2:] == (3, b, b)
                assert row["response"] != ref
            else:
                pytest.fail(f"unknown kind {kind}")


def test_truncated_blunting_some_end_with_full_stop(clean: datasets.DatasetDict) -> None:
    ends = [r.endswith(".") for r, k in zip(clean["train"]["response"], clean["train"]["kind"]) if k == "truncated"]
    assert 0.35 < np.mean(ends) < 0.65


def test_label_noise_rate(noisy: datasets.DatasetDict, clean: datasets.DatasetDict) -> None:
    changed = expected = total = 0.0
    for split in noisy:
        a, b = noisy[split], clean[split]
        assert a["response"] == b["response"] and a["kind"] == b["kind"]  # only labels differ
        for name in ATTRIBUTES:
            x, y = np.array(a[name]), np.array(b[name])
            assert np.all(np.abs(x - y) <= 1)
            changed += (x != y).sum()
            # +-1 at a bound (0 or 4) is clipped back half the time
            expected += (0.2 * np.where((y == 0) | (y == 4), 0.5, 1.0)).sum()
            total += len(y)
    assert abs(changed / total - expected / total) < 0.01, (changed / total, expected / total)


def test_misaligned_share_is_sensible(noisy: datasets.DatasetDict) -> None:
    for ds in noisy.values():
        share = float(np.mean(np.array(ds["helpfulness"]) <= 2))
        assert 0.55 < share < 0.75


def test_different_seed_differs(noisy: datasets.DatasetDict) -> None:
    other = build_embedded_dataset(1)
    assert digest(other) != digest(noisy)
    assert set(other["test"]["domain"]) != set(noisy["test"]["domain"])


def _fresh_cache(tmp_path: Path) -> Path:
    """A cache folder holding only the harvest: the rows are built again, not read back."""
    from fedgate.data.docsource import cache_path

    harvest = cache_path(MAX_CHARS)
    (tmp_path / harvest.name).write_bytes(harvest.read_bytes())
    return tmp_path


@pytest.mark.integration
def test_same_seed_byte_identical_across_processes(noisy: datasets.DatasetDict, tmp_path: Path) -> None:
    """A fresh interpreter with another hash seed and transformers imported first (it
    patches stdlib classes) must build exactly the same rows (built there, not read from the
    on-disk copy)."""
    script = (
        "import sys, hashlib, json, transformers\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_data_embedded import digest\n"
        "from fedgate.data import build_embedded_dataset\n"
        "print(digest(build_embedded_dataset(0)))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO_ROOT),
           "FEDGATE_CACHE_DIR": str(_fresh_cache(tmp_path))}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                            timeout=120, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == digest(noisy)


def test_cached_and_loadable(noisy: datasets.DatasetDict) -> None:
    assert build_embedded_dataset(0) is noisy
    assert load_helpsteer("embedded", "test").to_list() == noisy["test"].to_list()


def test_a_fresh_process_reads_the_built_rows_from_disk(noisy, tmp_path, monkeypatch) -> None:
    from fedgate.data import embedded

    monkeypatch.setenv("FEDGATE_CACHE_DIR", str(_fresh_cache(tmp_path)))
    embedded.build_embedded_dataset.cache_clear()
    try:
        built = embedded.build_embedded_dataset(0)  # built, and kept on disk
        assert (embedded.built_path(0, 0.2, MAX_CHARS) / "dataset_dict.json").is_file()
        embedded.build_embedded_dataset.cache_clear()  # as a fresh process starts
        monkeypatch.setattr(embedded, "keep_mask", lambda *a: pytest.fail("built again instead of read"))
        read = embedded.build_embedded_dataset(0)
        assert digest(read) == digest(built) == digest(noisy)
        assert list(tmp_path.glob("*.tmp")) == []
    finally:
        embedded.build_embedded_dataset.cache_clear()


def test_the_on_disk_copy_is_keyed_by_every_argument(tmp_path, monkeypatch) -> None:
    from fedgate.data.embedded import built_path

    monkeypatch.setenv("FEDGATE_CACHE_DIR", str(tmp_path))
    paths = {built_path(0, 0.2, 600), built_path(1, 0.2, 600), built_path(0, 0.0, 600), built_path(0, 0.2, 800)}
    assert len(paths) == 4 and all(p.parent == tmp_path for p in paths)


def test_a_damaged_on_disk_copy_is_built_again(tmp_path, monkeypatch, caplog) -> None:
    from fedgate.data import embedded

    monkeypatch.setenv("FEDGATE_CACHE_DIR", str(_fresh_cache(tmp_path)))
    path = embedded.built_path(0, 0.0, MAX_CHARS)
    path.mkdir()
    (path / "dataset_dict.json").write_text("{not json")
    embedded.build_embedded_dataset.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="fedgate.data.embedded"):
            rows = embedded.build_embedded_dataset(0, label_noise=0.0)
        assert "building the dataset again" in caplog.text and len(rows["train"]) > 1000
        assert json.loads((path / "dataset_dict.json").read_text())["splits"] == ["train", "validation", "test"]
    finally:
        embedded.build_embedded_dataset.cache_clear()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="label_noise"):
        build_embedded_dataset(0, label_noise=1.5)


def test_corrupt_swaps_never_overlap_when_the_name_is_an_opposite_word():
    import random

    from fedgate.data.degrade import _swap_sites, corrupt

    text = "Open the file before reading. Returns true after the first open call; open is lazy."
    sites = _swap_sites(text, "open", ["close_all"])
    spans = [(s[0], s[1]) for s in sites]
    assert len(spans) == len(set(spans))
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    for seed in range(20):
        out = corrupt(text, "open", ["close_all"], random.Random(seed))
        assert out is not None
        corrupted, swaps = out
        assert "close_allclose" not in corrupted and "closeclose_all" not in corrupted
        assert swaps <= len(sites)
