"""Calibration diagnostic for the embedded dataset: how easy are the shortcuts?

Fits simple baselines on the train split and reports held-out ROC-AUC on the test split
for detecting misaligned responses (helpfulness <= 2), plus the misaligned share per
split and per kind. If a cheap baseline gets far above the dataset's design targets
(length ~0.54, TF-IDF ~0.63, hand features ~0.76), a shortcut is too easy.

Run: ``python -m fedgate.data.calibrate [--seed 0] [--label-noise 0.2]``
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence

import datasets
import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fedgate.data.docsource import split_sentences
from fedgate.data.embedded import KINDS, build_embedded_dataset
from fedgate.data.schema import binarize_misaligned


def hand_features(prompts: Sequence[str], responses: Sequence[str], tfidf: TfidfVectorizer) -> np.ndarray:
    """(rows, 4): log length, ends with punctuation, repeated-sentence ratio, cosine."""
    log_length = np.log1p([len(r) for r in responses])
    ends = np.array([r.rstrip().endswith((".", "!", "?")) for r in responses], dtype=float)
    repeated = []
    for response in responses:
        sentences = [re.sub(r"\W+", " ", s.lower()).strip() for s in split_sentences(response)]
        repeated.append(1 - len(set(sentences)) / max(1, len(sentences)))
    p, r = tfidf.transform(prompts), tfidf.transform(responses)  # rows are L2-normalised
    cosine = np.asarray(p.multiply(r).sum(axis=1)).ravel()
    return np.column_stack([log_length, ends, np.array(repeated), cosine])


def auc_aligned(y_misaligned: np.ndarray, p_aligned: np.ndarray) -> float:
    """ROC-AUC of detecting misaligned rows with score = P(aligned) (low = misaligned)."""
    return float(roc_auc_score(y_misaligned, -p_aligned))


def _joined(ds: datasets.Dataset) -> list[str]:
    return [p + " [SEP] " + r for p, r in zip(ds["prompt"], ds["response"])]


def _log_length(ds: datasets.Dataset) -> np.ndarray:
    return np.log1p([[len(r)] for r in ds["response"]])


def baselines(train: datasets.Dataset, evaluate: dict[str, datasets.Dataset]) -> dict[str, dict[str, float]]:
    """{baseline: {split: AUC}} for the three cheap baselines, each fitted once on `train`."""
    y_train = ~binarize_misaligned(train["helpfulness"])  # 1 = aligned
    length_model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    length_model.fit(_log_length(train), y_train)

    vectorizer = TfidfVectorizer(min_df=2, ngram_range=(1, 2), sublinear_tf=True, max_features=50000)
    text_model = LogisticRegression(max_iter=2000).fit(vectorizer.fit_transform(_joined(train)), y_train)

    # The cosine feature uses one vocabulary for prompts and responses, fitted on train.
    tfidf = TfidfVectorizer(sublinear_tf=True).fit(list(train["prompt"]) + list(train["response"]))
    hand_model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    hand_model.fit(hand_features(train["prompt"], train["response"], tfidf), y_train)

    out: dict[str, dict[str, float]] = {"response length": {}, "TF-IDF + logistic regression": {},
                                        "hand features + logistic regression": {}}
    for split, ds in evaluate.items():
        y = binarize_misaligned(ds["helpfulness"])
        out["response length"][split] = auc_aligned(y, length_model.predict_proba(_log_length(ds))[:, 1])
        out["TF-IDF + logistic regression"][split] = auc_aligned(
            y, text_model.predict_proba(vectorizer.transform(_joined(ds)))[:, 1])
        out["hand features + logistic regression"][split] = auc_aligned(
            y, hand_model.predict_proba(hand_features(ds["prompt"], ds["response"], tfidf))[:, 1])
    return out


def misaligned_table(dd: datasets.DatasetDict) -> list[str]:
    """Lines: misaligned share and count per split and per kind."""
    lines = [f"{'split':<12}{'kind':<24}{'rows':>7}{'misaligned':>12}{'share':>8}"]
    for split, ds in dd.items():
        mis = binarize_misaligned(ds["helpfulness"])
        kinds = np.array(ds["kind"])
        lines.append(f"{split:<12}{'(all)':<24}{len(ds):>7}{int(mis.sum()):>12}{mis.mean():>8.2f}")
        for kind in KINDS:
            rows = kinds == kind
            if rows.any():
                share = mis[rows].mean()
                lines.append(f"{'':<12}{kind:<24}{int(rows.sum()):>7}{int(mis[rows].sum()):>12}{share:>8.2f}")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label-noise", type=float, default=0.2)
    args = parser.parse_args(argv)
    dd = build_embedded_dataset(args.seed, label_noise=args.label_noise)
    print(f"embedded dataset (seed {args.seed}, label noise {args.label_noise}): "
          + ", ".join(f"{split} {len(ds)} rows / {len(set(ds['domain']))} families" for split, ds in dd.items()))
    print("\nheld-out ROC-AUC, misaligned = helpfulness <= 2 (fit on train; test, and validation as a check):")
    aucs = baselines(dd["train"], {"test": dd["test"], "validation": dd["validation"]})
    print(f"  {'baseline':<38}{'test':>7}{'valid':>8}")
    for name, by_split in aucs.items():
        print(f"  {name:<38}{by_split['test']:>7.3f}{by_split['validation']:>8.3f}")
    print()
    print("\n".join(misaligned_table(dd)))


if __name__ == "__main__":
    main()
