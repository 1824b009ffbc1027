"""The lower layers' states on disk (fedgate/hidden_store.py): what one process computed,
another reads back exactly, and any change to what the states depend on misses the store."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

import fedgate.train as train_module
from fedgate.batching import encode_split
from fedgate.config import FedgateConfig
from fedgate.data.schema import rows_to_dataset
from fedgate.hidden_store import load_states, save_states, states_key
from fedgate.inject import adapter_modules
from fedgate.model import build_reward_model
from fedgate.evaluation import predict
from fedgate.train import prepare_cache
from tests.test_train import _rows

CPU = torch.device("cpu")


def _cfg(tmp_path, **flat) -> FedgateConfig:
    base = {"model.backbone": "tiny-bert", "model.layers": "1", "adapter.r": 4,
            "train.cache-dir": str(tmp_path / "states")}
    return FedgateConfig.from_flat({**base, **flat})


@pytest.fixture()
def built(tmp_path):
    cfg = _cfg(tmp_path)
    torch.manual_seed(0)
    model, tok = build_reward_model(cfg.model, cfg.adapter)
    with torch.no_grad():  # non-zero adapters: the upper layers really run on the states
        for m in adapter_modules(model).values():
            m.lora_B.normal_(0, 0.1)
    return cfg, model, tok


def _split(tok, cfg, n=24, seed=0):
    return encode_split(rows_to_dataset(_rows(n, seed)), tok, cfg.model)


def test_a_second_process_reads_the_states_instead_of_computing_them(built, monkeypatch):
    cfg, model, tok = built
    first = _split(tok, cfg)
    split_at = prepare_cache(model, [first], cfg, tok.pad_token_id, CPU, progress=False)
    assert split_at == 1
    files = list(Path(cfg.train.cache_dir).glob("*.safetensors"))
    assert len(files) == 1

    def no_forward(*args, **kwargs):
        raise AssertionError("the lower layers ran although the store held their output")

    monkeypatch.setattr(train_module, "cache_lower_layers", no_forward)
    second = _split(tok, cfg)  # a fresh encoding of the same rows, as another process has
    assert second.hidden is None
    prepare_cache(model, [second], cfg, tok.pad_token_id, CPU, progress=False)
    assert second.split_at == split_at and len(second.hidden) == len(first.hidden)
    for a, b in zip(first.hidden, second.hidden):
        assert a.dtype == b.dtype == torch.float16 and torch.equal(a, b)
    np.testing.assert_array_equal(predict(model, second, cfg, tok.pad_token_id, CPU),
                                  predict(model, first, cfg, tok.pad_token_id, CPU))


def test_the_key_follows_rows_lower_weights_and_split_but_not_the_adapters(built):
    cfg, model, tok = built
    split = _split(tok, cfg)
    key = states_key(model, split, 1, torch.float16)
    assert states_key(model, _split(tok, cfg), 1, torch.float16) == key  # same rows, same key
    assert states_key(model, _split(tok, cfg, seed=1), 1, torch.float16) != key  # other rows
    assert states_key(model, split, 0, torch.float16) != key  # cache stops at another layer
    assert states_key(model, split, 1, torch.bfloat16) != key
    with torch.no_grad():  # adapters and the head train every round: the states do not depend on them
        for m in adapter_modules(model).values():
            m.lora_A.add_(1.0)
        model.head.weight.add_(1.0)
    assert states_key(model, split, 1, torch.float16) == key
    with torch.no_grad():  # but a changed frozen lower layer (another checkpoint) is another key
        model.backbone.encoder.layer[0].attention.self.query.weight.add_(1e-3)
    assert states_key(model, split, 1, torch.float16) != key


def test_an_unreadable_file_is_recomputed_with_a_warning(built, caplog):
    cfg, model, tok = built
    first = _split(tok, cfg)
    prepare_cache(model, [first], cfg, tok.pad_token_id, CPU, progress=False)
    path = save_states(cfg.train.cache_dir, model, first)
    path.write_bytes(path.read_bytes()[:100])  # cut short, as by a full disk
    second = _split(tok, cfg)
    with caplog.at_level(logging.WARNING, logger="fedgate.hidden_store"):
        assert load_states(cfg.train.cache_dir, model, second, 1) is False
    assert second.hidden is None and "unreadable" in caplog.text
    prepare_cache(model, [second], cfg, tok.pad_token_id, CPU, progress=False)  # computes and rewrites
    assert all(torch.equal(a, b) for a, b in zip(first.hidden, second.hidden))
    assert load_states(cfg.train.cache_dir, model, _split(tok, cfg), 1) is True


def test_without_a_cache_dir_nothing_is_written(built, tmp_path):
    cfg, model, tok = built
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, cache_dir=""))
    split = _split(tok, cfg)
    prepare_cache(model, [split], cfg, tok.pad_token_id, CPU, progress=False)
    assert split.hidden is not None and not (tmp_path / "states").exists()
