"""Partitioners: disjoint and complete, skew controlled by alpha (measured), errors named."""

from __future__ import annotations

import datasets
import numpy as np
import pytest

from fedgate.data import DataError, partition_dataset
from fedgate.data.partition import METHODS


@pytest.fixture(scope="module")
def rows() -> datasets.Dataset:
    """2,000 rows: an index, a skewed 0-4 label, 25 domains of unequal size."""
    rng = np.random.default_rng(7)
    n = 2000
    return datasets.Dataset.from_dict({
        "idx": list(range(n)),
        "helpfulness": rng.choice(5, size=n, p=[0.1, 0.15, 0.2, 0.3, 0.25]).tolist(),
        "domain": [f"d{int(v)}" for v in rng.zipf(1.6, size=n) % 25],
        "kind": rng.choice(["real", "concise", "truncated", "padded", "shuffled", "offtopic", "corrupted"],
                           size=n).tolist(),
    })


def label_tv(parts: list[datasets.Dataset], label: str = "helpfulness") -> float:
    """Mean total-variation distance of each partition's label distribution from the global one."""
    everything = np.concatenate([p[label] for p in parts])
    overall = np.bincount(everything, minlength=5) / len(everything)
    return float(np.mean([0.5 * np.abs(np.bincount(p[label], minlength=5) / len(p) - overall).sum() for p in parts]))


@pytest.mark.parametrize("method", METHODS)
def test_disjoint_and_complete(rows: datasets.Dataset, method: str) -> None:
    parts = partition_dataset(rows, 8, method, seed=3)
    assert len(parts) == 8
    ids = np.concatenate([p["idx"] for p in parts])
    assert len(ids) == len(rows)
    assert sorted(ids.tolist()) == list(range(len(rows)))
    assert all(p.column_names == rows.column_names for p in parts)


@pytest.mark.parametrize("method", METHODS)
def test_deterministic_for_a_seed(rows: datasets.Dataset, method: str) -> None:
    first = [p["idx"] for p in partition_dataset(rows, 5, method, seed=11)]
    again = [p["idx"] for p in partition_dataset(rows, 5, method, seed=11)]
    assert first == again
    if method != "domain":  # domain assignment only uses the seed to break size ties
        other = [p["idx"] for p in partition_dataset(rows, 5, method, seed=12)]
        assert other != first


def test_iid_sizes_and_labels_balanced(rows: datasets.Dataset) -> None:
    parts = partition_dataset(rows, 7, "iid")
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert label_tv(parts) < 0.08


def test_dirichlet_alpha_controls_label_skew(rows: datasets.Dataset) -> None:
    skewed = np.mean([label_tv(partition_dataset(rows, 10, "dirichlet", alpha=0.1, seed=s)) for s in range(3)])
    mild = np.mean([label_tv(partition_dataset(rows, 10, "dirichlet", alpha=10.0, seed=s)) for s in range(3)])
    assert skewed > 0.4, skewed
    assert mild < 0.15, mild
    assert skewed > mild + 0.25


def test_dirichlet_on_another_label(rows: datasets.Dataset) -> None:
    parts = partition_dataset(rows, 4, "dirichlet", alpha=0.3, label="domain", seed=1)
    assert sum(len(p) for p in parts) == len(rows)


def test_domain_keeps_each_domain_on_one_client(rows: datasets.Dataset) -> None:
    parts = partition_dataset(rows, 6, "domain", seed=0)
    owner: dict[str, int] = {}
    for pid, part in enumerate(parts):
        for domain in set(part["domain"]):
            assert domain not in owner, f"{domain} in partitions {owner[domain]} and {pid}"
            owner[domain] = pid
    assert set(owner) == set(rows["domain"])


def test_quantity_skew_sizes_unequal_labels_iid(rows: datasets.Dataset) -> None:
    skewed = [len(p) for p in partition_dataset(rows, 8, "quantity", alpha=0.1, seed=2)]
    even = [len(p) for p in partition_dataset(rows, 8, "quantity", alpha=1000.0, seed=2)]
    assert sum(skewed) == sum(even) == len(rows)
    assert max(skewed) / min(skewed) > 10, skewed
    assert max(even) / min(even) < 1.3, even
    big = [p for p in partition_dataset(rows, 4, "quantity", alpha=5.0, seed=2)]
    assert label_tv(big) < 0.1


def test_min_partition_size_respected(rows: datasets.Dataset) -> None:
    for method in ("dirichlet", "quantity"):
        parts = partition_dataset(rows, 10, method, alpha=0.1, seed=0, min_partition_size=20)
        assert min(len(p) for p in parts) >= 20


def test_too_few_rows_names_the_empty_partition(rows: datasets.Dataset) -> None:
    small = rows.select(range(5))
    for method in METHODS:
        with pytest.raises(DataError, match=rf"partition 5 has 0 rows .*method '{method}'.*\[1, 1, 1, 1, 1, 0, 0, 0\]"):
            partition_dataset(small, 8, method)


def test_domain_needs_enough_domains(rows: datasets.Dataset) -> None:
    three = rows.filter(lambda r: r["domain"] in ("d1", "d2", "d3"))
    with pytest.raises(DataError, match=r"partition 3 has 0 rows .*method 'domain'"):
        partition_dataset(three, 5, "domain")


def test_impossible_min_size_names_partition(rows: datasets.Dataset) -> None:
    with pytest.raises(DataError, match=r"partition \d+ has \d+ rows \(< min_partition_size=300\) with method 'dirichlet'"):
        partition_dataset(rows, 6, "dirichlet", alpha=0.05, min_partition_size=300)


def test_bad_arguments(rows: datasets.Dataset) -> None:
    with pytest.raises(DataError, match=r"unknown partition method 'label'; valid: \['iid', 'dirichlet', 'domain', 'quantity', 'kind'\]"):
        partition_dataset(rows, 3, "label")
    with pytest.raises(DataError, match="no label column 'score'"):
        partition_dataset(rows, 3, "dirichlet", label="score")
    with pytest.raises(DataError, match="no 'domain' column"):
        partition_dataset(rows.remove_columns("domain"), 3, "domain")
    with pytest.raises(DataError, match="alpha must be > 0"):
        partition_dataset(rows, 3, "quantity", alpha=0)


@pytest.mark.parametrize("clients", [2, 5, 10])
def test_kind_skew_deals_degraded_kinds_round_robin_and_spreads_good_answers(rows, clients):
    parts = partition_dataset(rows, clients, "kind", seed=1)
    degraded = ["corrupted", "offtopic", "padded", "shuffled", "truncated"]  # sorted
    for c, part in enumerate(parts):
        seen = sorted(set(part["kind"]) - {"real", "concise"})
        assert seen == [k for i, k in enumerate(degraded) if i % clients == c % len(degraded)]
    # every degraded row lands on one of its kind's owners; good answers are split evenly
    good = [sum(k in ("real", "concise") for k in p["kind"]) for p in parts]
    assert max(good) - min(good) <= 1
    if clients == 10:  # more clients than kinds: each kind shared by two clients, rows split evenly
        for i, kind in enumerate(degraded):
            counts = [sum(k == kind for k in parts[c]["kind"]) for c in (i, i + 5)]
            assert abs(counts[0] - counts[1]) <= 1 and min(counts) > 0
    with pytest.raises(DataError, match="no 'kind' column"):
        partition_dataset(rows.remove_columns("kind"), 2, "kind")
