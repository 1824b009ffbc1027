"""Which rows train, select and test: no prompt crosses splits, selection rows never test."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedgate.config import FedgateConfig
from fedgate.data import DataError, split_by_prompt
from fedgate.data.schema import rows_to_dataset
from fedgate.data.splits import load_eval_split, load_splits
from fedgate.evaluation import auc_per_kind


def _rows(n_prompts: int, per_prompt: int = 2) -> list[dict]:
    return [{"prompt": f"question {p}?", "response": f"answer {p}.{r}", "helpfulness": (p + r) % 5,
             "correctness": 2, "coherence": 2, "complexity": 2, "verbosity": 2}
            for p in range(n_prompts) for r in range(per_prompt)]


def _write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_split_by_prompt_keeps_prompts_together_and_covers_all_rows():
    ds = rows_to_dataset(_rows(50, 3))
    parts = split_by_prompt(ds, {"train": 0.8, "validation": 0.1, "test": 0.1}, seed=1)
    prompts = {k: set(v["prompt"]) for k, v in parts.items()}
    assert sum(len(v) for v in parts.values()) == len(ds)
    assert not prompts["train"] & prompts["test"] and not prompts["train"] & prompts["validation"]
    assert not prompts["validation"] & prompts["test"]
    assert [len(prompts[k]) for k in ("train", "validation", "test")] == [40, 5, 5]
    again = split_by_prompt(ds, {"train": 0.8, "validation": 0.1, "test": 0.1}, seed=1)
    assert again["test"]["prompt"] == parts["test"]["prompt"]
    with pytest.raises(DataError, match="empty"):
        split_by_prompt(rows_to_dataset(_rows(2)), {"train": 0.8, "validation": 0.1, "test": 0.1})


def test_one_file_is_split_by_prompt_not_reused(tmp_path):
    f = tmp_path / "all.jsonl"
    _write_jsonl(f, _rows(40))
    splits = load_splits(FedgateConfig.from_flat({"data.source": str(f)}))
    assert sum(len(v) for v in splits.values()) == 80
    assert not set(splits["train"]["prompt"]) & set(splits["test"]["prompt"])
    assert not set(splits["validation"]["prompt"]) & set(splits["test"]["prompt"])
    # evaluating a single file scores every row of it
    assert len(load_eval_split(FedgateConfig.from_flat({"data.source": str(f)}), "test")) == 80


def test_folder_without_test_split_tests_on_validation_and_carves_a_new_validation(tmp_path):
    _write_jsonl(tmp_path / "train.jsonl", _rows(40))
    _write_jsonl(tmp_path / "validation.jsonl", [dict(r, prompt="v" + r["prompt"]) for r in _rows(5)])
    splits = load_splits(FedgateConfig.from_flat({"data.source": str(tmp_path)}))
    assert all(p.startswith("v") for p in splits["test"]["prompt"]) and len(splits["test"]) == 10
    assert not any(p.startswith("v") for p in splits["validation"]["prompt"])
    assert not set(splits["train"]["prompt"]) & set(splits["validation"]["prompt"])
    assert len(splits["train"]) + len(splits["validation"]) == 80


def test_unknown_embedded_split_is_a_clear_error():
    with pytest.raises(DataError, match="splits"):
        load_eval_split(FedgateConfig(), "holdout")


def test_auc_per_kind_ranks_each_kind_against_real_rows():
    kinds = ["real", "real", "padded", "padded", "concise", "concise"]
    pred = np.zeros((6, 5))
    pred[:, 0] = [4.0, 3.0, 3.5, 1.0, 2.0, 1.5]  # predicted helpfulness
    out = auc_per_kind(pred, kinds)
    # padded below real: pairs (4>3.5 yes, 4>1 yes, 3>3.5 no, 3>1 yes) -> 3/4
    assert out["auc_kind_padded"] == pytest.approx(0.75)
    assert out["auc_kind_concise"] == pytest.approx(1.0)
    assert "auc_kind_real" not in out
    assert auc_per_kind(pred, [""] * 6) == {}


def test_hub_dataset_without_the_split_is_a_data_error(monkeypatch):
    import datasets

    from fedgate.data import load_helpsteer

    def no_such_split(name, split):
        raise ValueError(f'Unknown split "{split}". Should be one of [\'train\', \'validation\'].')

    monkeypatch.setattr(datasets, "load_dataset", no_such_split)
    with pytest.raises(DataError, match="no split 'test'"):
        load_helpsteer("nvidia/HelpSteer2", "test")
