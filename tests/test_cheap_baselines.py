"""Baselines: the length sign is learned on training rows; probes score above chance on a
separable signal and at chance on noise."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fedgate.cheap_baselines import length_auc, probe_auc, tfidf_auc


def test_length_sign_comes_from_training_rows():
    y_train = np.array([1, 1, 0, 0], dtype=bool)  # on train, misaligned rows are the short ones
    train = ["a", "bb", "cccccc", "ddddddd"]
    test = ["x", "yyyyyy", "zz", "wwwwwww"]
    y_test = np.array([1, 0, 1, 0], dtype=bool)
    lengths = np.array([len(t) for t in test])
    assert length_auc(train, y_train, test, y_test) == pytest.approx(roc_auc_score(y_test, -lengths))
    # the same test rows with the opposite training signal give the mirrored score
    assert length_auc(train, ~y_train, test, y_test) == pytest.approx(roc_auc_score(y_test, lengths))


def test_tfidf_finds_a_lexical_cue():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(50)]
    def texts(y):
        return [" ".join(rng.choice(words, 8)) + (" broken" if bad else " fine") for bad in y]
    y_tr, y_te = rng.random(200) < 0.5, rng.random(100) < 0.5
    assert tfidf_auc(texts(y_tr), y_tr, texts(y_te), y_te) > 0.95


def test_probe_separable_vs_noise():
    rng = np.random.default_rng(0)
    y = {k: rng.random(n) < 0.5 for k, n in (("tr", 300), ("va", 100), ("te", 100))}
    x = {k: rng.normal(size=(len(v), 8)) + 2.0 * v[:, None] for k, v in y.items()}
    auc, c = probe_auc(x["tr"], y["tr"], x["va"], y["va"], x["te"], y["te"])
    assert auc > 0.95 and c in (0.001, 0.01, 0.1, 1.0)
    noise = {k: rng.normal(size=(len(v), 8)) for k, v in y.items()}
    auc_noise, _ = probe_auc(noise["tr"], y["tr"], noise["va"], y["va"], noise["te"], y["te"])
    assert 0.3 < auc_noise < 0.7


def test_boosted_trees_find_an_interaction_a_linear_probe_cannot():
    from fedgate.cheap_baselines import boosted_trees_auc

    rng = np.random.default_rng(0)
    x = {k: rng.normal(size=(n, 4)) for k, n in (("tr", 600), ("va", 200), ("te", 200))}
    y = {k: (v[:, 0] * v[:, 1]) > 0 for k, v in x.items()}  # XOR of signs: no linear signal
    trees, lr = boosted_trees_auc(x["tr"], y["tr"], x["va"], y["va"], x["te"], y["te"])
    linear, _ = probe_auc(x["tr"], y["tr"], x["va"], y["va"], x["te"], y["te"])
    assert trees > 0.9 and lr in (0.05, 0.1)
    assert linear < 0.65
