"""The train / validation / test splits of the configured data source, and one split alone
for evaluation: the split rules every run shares (centralized, federated shards, the
server's evaluator)."""

from __future__ import annotations

import logging
from pathlib import Path

from fedgate.config import FedgateConfig
from fedgate.data import DataError, build_embedded_dataset, load_helpsteer, split_by_prompt
from fedgate.data.pairs import is_pair_file, read_pairs

log = logging.getLogger(__name__)


def _embedded(d):
    """The embedded dataset as configured by a DataConfig (cached per arguments)."""
    return build_embedded_dataset(d.seed, label_noise=d.label_noise, max_response_chars=d.max_response_chars)


def load_splits(cfg: FedgateConfig) -> dict:
    """train / validation / test datasets for the configured source.

    Validation rows choose the ridge lambda, the best checkpoint and the F1 cut, so they are
    never the rows test metrics are reported on:
    - one data file is split 80/10/10 by prompt (seeded);
    - a folder (or hub dataset) without a test split: its validation split becomes the test
      split and a new validation split is carved from train by prompt (10%).
    """
    d = cfg.data
    if d.source == "embedded":
        dd = _embedded(d)
        splits = {"train": dd["train"], "validation": dd["validation"], "test": dd["test"]}
    elif is_pair_file(d.source):
        pairs, _ = read_pairs(d.source, bad_rows=d.bad_rows)  # logs what it kept and left out
        splits = split_by_prompt(pairs, {"train": 0.8, "validation": 0.1, "test": 0.1}, d.seed)
        log.info("one pair file: split 80/10/10 by prompt (seed %d)", d.seed)
    elif Path(d.source).is_file():
        splits = split_by_prompt(load_helpsteer(d.source, seed=d.seed),
                                 {"train": 0.8, "validation": 0.1, "test": 0.1}, d.seed)
        log.info("one data file: split 80/10/10 by prompt (seed %d)", d.seed)
    else:
        train = load_helpsteer(d.source, d.train_split, seed=d.seed)
        validation = load_helpsteer(d.source, d.validation_split, seed=d.seed)
        try:
            splits = {"train": train, "validation": validation,
                      "test": load_helpsteer(d.source, d.test_split, seed=d.seed)}
        except DataError as e:
            log.warning("no %r split (%s): testing on %r and carving validation from train (10%% of prompts)",
                        d.test_split, e, d.validation_split)
            carved = split_by_prompt(train, {"train": 0.9, "validation": 0.1}, d.seed)
            splits = {"train": carved["train"], "validation": carved["validation"], "test": validation}
    if d.limit and d.limit < len(splits["train"]):
        splits["train"] = splits["train"].shuffle(seed=d.seed).select(range(d.limit))
    return splits


def load_eval_split(cfg: FedgateConfig, split: str):
    """The rows ``fedgate evaluate`` scores: a named split, or every row of a single file."""
    d = cfg.data
    if d.source == "embedded":
        dd = _embedded(d)
        if split not in dd:
            raise DataError(f"the embedded dataset has splits {list(dd)}, not {split!r}")
        return dd[split]
    if is_pair_file(d.source):
        log.info("%s is one pair file: evaluating all its pairs", d.source)
        return read_pairs(d.source, bad_rows=d.bad_rows)[0]
    if Path(d.source).is_file():
        log.info("%s is one file: evaluating all its rows", d.source)
    return load_helpsteer(d.source, split, seed=d.seed)
