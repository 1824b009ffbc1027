"""Semantic noise and conflicting feedback: identity at zero, seeded, measured strength."""

from __future__ import annotations

import difflib
import random

import datasets
import numpy as np
import pytest

from fedgate.data import ATTRIBUTES, DataError, add_semantic_noise, binarize_misaligned, conflicting_feedback, noisy_dataset

# 400 distinct words (so changes can be located), ten to a line.
TEXT = "\n".join(" ".join(f"term{10 * line + k}" for k in range(10)) + "." for line in range(40))


def changed_share(original: str, noisy: str) -> float:
    """Share of words not matched in order between the two texts."""
    return 1.0 - difflib.SequenceMatcher(None, original.split(), noisy.split(), autojunk=False).ratio()


@pytest.fixture(scope="module")
def table() -> datasets.Dataset:
    rng = np.random.default_rng(0)
    n = 101
    data = {"prompt": [f"Question {i}?" for i in range(n)], "response": [TEXT[: 80 + 3 * i] for i in range(n)]}
    for name in ATTRIBUTES:
        data[name] = rng.integers(0, 5, size=n).tolist()
    data["domain"] = ["d"] * n
    return datasets.Dataset.from_dict(data)


def test_rate_zero_is_identity() -> None:
    assert add_semantic_noise(TEXT, 0.0, random.Random(1)) is TEXT


@pytest.mark.parametrize("rate", [-0.1, 1.5])
def test_rate_out_of_range(rate: float) -> None:
    with pytest.raises(ValueError, match="rate must be in"):
        add_semantic_noise(TEXT, rate, random.Random(0))


def test_seeded_determinism() -> None:
    a = add_semantic_noise(TEXT, 0.3, random.Random(5))
    b = add_semantic_noise(TEXT, 0.3, random.Random(5))
    c = add_semantic_noise(TEXT, 0.3, random.Random(6))
    assert a == b and a != c and a != TEXT


def test_higher_rate_changes_more_words() -> None:
    def mean_change(rate: float) -> float:
        return float(np.mean([changed_share(TEXT, add_semantic_noise(TEXT, rate, random.Random(s))) for s in range(10)]))

    low, mid, high = mean_change(0.05), mean_change(0.2), mean_change(0.5)
    assert 0.0 < low < mid < high
    assert mid > 2 * low and high > 1.5 * mid
    # Each perturbation touches about one word (two for a swap): the share tracks the rate.
    assert 0.1 < mid < 0.35, mid


def test_words_and_layout_survive_at_low_rate() -> None:
    noisy = add_semantic_noise(TEXT, 0.1, random.Random(3))
    assert noisy.count("\n") >= TEXT.count("\n") - 3  # separators kept, except by dropped words
    assert changed_share(TEXT, noisy) > 0
    assert add_semantic_noise("", 0.5, random.Random(0)) == ""


def test_noisy_dataset_seeded_and_only_touches_columns(table: datasets.Dataset) -> None:
    a = noisy_dataset(table, 0.3, seed=1)
    b = noisy_dataset(table, 0.3, seed=1)
    c = noisy_dataset(table, 0.3, seed=2)
    assert a.to_list() == b.to_list() and a["response"] != c["response"]
    assert a.column_names == table.column_names and a.features == table.features
    assert a["response"] != table["response"] and a["prompt"] != table["prompt"]
    for name in (*ATTRIBUTES, "domain"):
        assert a[name] == table[name]
    only_response = noisy_dataset(table, 0.3, seed=1, columns=("response",))
    assert only_response["prompt"] == table["prompt"]
    with pytest.raises(DataError, match=r"no column\(s\) \['text'\]"):
        noisy_dataset(table, 0.3, columns=("text",))


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 1.0])
def test_flip_changes_exactly_the_chosen_rows(table: datasets.Dataset, fraction: float) -> None:
    out = conflicting_feedback(table, fraction, seed=4)
    flipped = np.array(out["flipped"])
    assert out.features["flipped"].dtype == "bool"
    assert flipped.sum() == round(fraction * len(table))
    for name in ATTRIBUTES:
        before, after = np.array(table[name]), np.array(out[name])
        assert np.array_equal(after[flipped], 4 - before[flipped])
        assert np.array_equal(after[~flipped], before[~flipped])
    assert out["response"] == table["response"]


def test_flip_is_seeded(table: datasets.Dataset) -> None:
    a = conflicting_feedback(table, 0.3, seed=1)["flipped"]
    assert a == conflicting_feedback(table, 0.3, seed=1)["flipped"]
    assert a != conflicting_feedback(table, 0.3, seed=2)["flipped"]


def test_shuffle_mode_takes_another_rows_attributes(table: datasets.Dataset) -> None:
    out = conflicting_feedback(table, 0.4, seed=3, mode="shuffle")
    flipped = np.array(out["flipped"])
    assert flipped.sum() == round(0.4 * len(table))
    before = np.column_stack([table[name] for name in ATTRIBUTES])
    after = np.column_stack([out[name] for name in ATTRIBUTES])
    assert np.array_equal(after[~flipped], before[~flipped])
    for i in np.flatnonzero(flipped):
        donors = [j for j in range(len(table)) if j != i and np.array_equal(before[j], after[i])]
        assert donors, f"row {i} got attributes that no other row has"


def test_conflicting_feedback_arguments(table: datasets.Dataset) -> None:
    with pytest.raises(ValueError, match="fraction must be in"):
        conflicting_feedback(table, 1.2)
    with pytest.raises(ValueError, match=r"unknown mode 'invert'; valid: \['flip', 'shuffle'\]"):
        conflicting_feedback(table, 0.1, mode="invert")
    with pytest.raises(DataError, match="already has a 'flipped' column"):
        conflicting_feedback(conflicting_feedback(table, 0.1), 0.1)


def test_binarize_misaligned() -> None:
    assert binarize_misaligned([0, 1, 2, 3, 4]).tolist() == [True, True, True, False, False]
    assert binarize_misaligned(np.array([3, 4]), threshold=3).tolist() == [True, False]
