"""Cheap reference scores for misaligned-response detection, on the same split as a model.

A trained reward model must beat these to be worth its compute: response length, TF-IDF +
logistic regression on "prompt [SEP] response", a linear probe (logistic regression) on
the frozen backbone's pooled features (the very features the reward head sees at step 0),
and gradient-boosted trees on those same features (the strongest cheap baseline: trees
find non-linear interactions a linear head cannot).
"""

from __future__ import annotations

import numpy as np

from fedgate.metrics import misaligned, roc_auc


def length_auc(train_responses, y_train: np.ndarray, test_responses, y_test: np.ndarray) -> float:
    """AUC of character length as the misalignment score; its sign (longer = worse or
    better) is learned on the training rows, never on the test rows."""
    sign = 1.0 if roc_auc(y_train, [len(r) for r in train_responses]) >= 0.5 else -1.0
    return roc_auc(y_test, np.array([sign * len(r) for r in test_responses], dtype=float))


def tfidf_auc(train_texts, y_train: np.ndarray, test_texts, y_test: np.ndarray, seed: int = 0) -> float:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=50_000, sublinear_tf=True)
    clf = LogisticRegression(C=1.0, max_iter=2000, random_state=seed)
    clf.fit(vec.fit_transform(train_texts), y_train)
    return roc_auc(y_test, clf.predict_proba(vec.transform(test_texts))[:, 1])


def probe_auc(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
              x_test: np.ndarray, y_test: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """Logistic-regression probe on frozen features; C chosen on validation. (test AUC, C)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_train)
    xt, xv, xs = scaler.transform(x_train), scaler.transform(x_val), scaler.transform(x_test)
    best = (-1.0, 1.0, None)
    for c in (0.001, 0.01, 0.1, 1.0):
        clf = LogisticRegression(C=c, max_iter=3000, random_state=seed).fit(xt, y_train)
        auc = roc_auc(y_val, clf.predict_proba(xv)[:, 1])
        if auc > best[0]:
            best = (auc, c, clf)
    return roc_auc(y_test, best[2].predict_proba(xs)[:, 1]), best[1]


def boosted_trees_auc(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                      x_test: np.ndarray, y_test: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """scikit-learn's HistGradientBoostingClassifier on frozen features; its learning rate
    chosen on validation. (test AUC, learning rate)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    best = (-1.0, 0.1, None)
    for lr in (0.05, 0.1):
        clf = HistGradientBoostingClassifier(learning_rate=lr, max_iter=300, early_stopping=True,
                                             validation_fraction=0.1, n_iter_no_change=20, random_state=seed)
        clf.fit(x_train, y_train)
        auc = roc_auc(y_val, clf.predict_proba(x_val)[:, 1])
        if best[2] is None or auc > best[0]:
            best = (auc, lr, clf)
    return roc_auc(y_test, best[2].predict_proba(x_test)[:, 1]), best[1]


def all_baselines(train_ds, val_ds, test_ds, frozen: dict[str, np.ndarray] | None, threshold: int = 2,
                  seed: int = 0) -> dict[str, float]:
    """Test AUCs of every baseline; ``frozen`` holds 'train'/'validation'/'test' features."""
    y = {name: misaligned(np.asarray(ds["helpfulness"]), threshold) for name, ds in
         (("train", train_ds), ("validation", val_ds), ("test", test_ds))}
    joint = lambda ds: [p + " [SEP] " + r for p, r in zip(ds["prompt"], ds["response"])]  # noqa: E731
    out = {
        "length": length_auc(train_ds["response"], y["train"], test_ds["response"], y["test"]),
        "tfidf_logreg": tfidf_auc(joint(train_ds), y["train"], joint(test_ds), y["test"], seed),
    }
    if frozen is not None:
        args = (frozen["train"], y["train"], frozen["validation"], y["validation"], frozen["test"], y["test"], seed)
        out["frozen_probe"], out["frozen_probe_C"] = probe_auc(*args)
        out["frozen_boosted_trees"], out["frozen_boosted_trees_lr"] = boosted_trees_auc(*args)
    return out
