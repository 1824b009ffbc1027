"""Adapter-only state: keys, safetensors round trip, strict loading, deltas, byte counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedgate.adapters import AdapterSpec
from fedgate.inject import freeze_except, inject_adapters
from fedgate.state import (
    adapter_state,
    apply_delta,
    from_numpy,
    load_adapter_state,
    load_state,
    save_state,
    state_delta,
    state_nbytes,
    to_numpy,
    trainable_names,
)
from fedgate.tiny import build_tiny_backbone

ADAPTER_SUFFIXES = (".lora_A", ".lora_B", ".gate_weight", ".gate_bias", ".struct_logit")


class _Model(nn.Module):
    def __init__(self, seed: int = 0):
        super().__init__()
        self.backbone = build_tiny_backbone("tiny-bert", vocab_size=50, seed=seed)
        self.head = nn.Linear(32, 5)
        inject_adapters(self.backbone, AdapterSpec(r=2), ("query", "value"))
        freeze_except(self, ("head.",))


def _randomise(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n in trainable_names(model):
            p = dict(model.named_parameters())[n]
            p.copy_(torch.randn(p.shape, generator=g))


@pytest.fixture
def model():
    m = _Model()
    _randomise(m, 1)
    return m


def test_adapter_state_keys_are_adapters_and_head_only(model):
    state = adapter_state(model)
    adapter_keys = [k for k in state if k.endswith(ADAPTER_SUFFIXES)]
    assert len(adapter_keys) == 4 * 5  # 4 adapters x (A, B, gate w, gate b, struct)
    assert set(state) - set(adapter_keys) == {"head.weight", "head.bias"}
    backbone_params = {n for n, _ in model.named_parameters()} - set(state)
    assert any(".base_layer." in n for n in backbone_params)
    assert not any(".base_layer." in k or "embeddings" in k for k in state)
    # same order as the model, detached copies
    order = [n for n, _ in model.named_parameters() if n in state]
    assert list(state) == order
    for k, v in state.items():
        assert not v.requires_grad
        assert v.data_ptr() != dict(model.named_parameters())[k].data_ptr()


def test_adapter_state_is_a_copy(model):
    state = adapter_state(model)
    before = state["head.bias"].clone()
    with torch.no_grad():
        model.head.bias.add_(1.0)
    assert torch.equal(state["head.bias"], before)


def test_save_load_round_trip(model, tmp_path):
    state = adapter_state(model)
    meta = {"round": 3, "client": "c-7", "score": 0.25, "layers": [0, 1]}
    path = save_state(tmp_path / "sub" / "adapters.safetensors", state, meta)
    assert path.is_file()
    loaded, loaded_meta = load_state(path)
    assert loaded_meta == meta
    assert list(sorted(loaded)) == sorted(state)
    for k in state:
        assert torch.equal(loaded[k], state[k])
        assert loaded[k].dtype == state[k].dtype


def test_save_without_metadata_and_missing_file(model, tmp_path):
    path = save_state(tmp_path / "a.safetensors", adapter_state(model))
    assert load_state(path)[1] == {}
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_state(tmp_path / "nope.safetensors")


def test_load_adapter_state_into_fresh_model(model, tmp_path):
    state = adapter_state(model)
    path = save_state(tmp_path / "a.safetensors", state)
    fresh = _Model()
    fresh_params = dict(fresh.named_parameters())
    assert not torch.equal(fresh_params["head.weight"], state["head.weight"])
    loaded, _ = load_state(path)
    load_adapter_state(fresh, loaded)
    fresh_params = dict(fresh.named_parameters())
    for k, v in state.items():
        assert torch.equal(fresh_params[k], v)
    # the backbone of the fresh model was not touched by loading
    assert torch.equal(fresh_params["backbone.embeddings.word_embeddings.weight"],
                       dict(_Model().named_parameters())["backbone.embeddings.word_embeddings.weight"])
    # and both models now compute the same thing
    ids = torch.randint(0, 50, (2, 5))
    fresh.eval(), model.eval()  # no dropout
    with torch.no_grad():
        torch.testing.assert_close(fresh.backbone(input_ids=ids).last_hidden_state,
                                   model.backbone(input_ids=ids).last_hidden_state)


def test_load_adapter_state_accepts_numpy(model):
    arrays = to_numpy(adapter_state(model))
    assert all(isinstance(v, np.ndarray) for v in arrays.values())
    fresh = _Model()
    load_adapter_state(fresh, arrays)
    assert torch.equal(fresh.head.weight, model.head.weight)
    back = from_numpy(arrays)
    assert all(torch.equal(back[k], v) for k, v in adapter_state(model).items())


def test_strict_missing_key(model):
    state = adapter_state(model)
    key = "backbone.encoder.layer.1.attention.self.value.lora_B"
    del state[key]
    with pytest.raises(KeyError) as err:
        load_adapter_state(_Model(), state)
    assert key in str(err.value)


def test_strict_unexpected_key(model):
    state = adapter_state(model)
    state["backbone.encoder.layer.0.attention.self.key.lora_A"] = torch.zeros(2, 32)
    with pytest.raises(KeyError) as err:
        load_adapter_state(_Model(), state)
    assert "backbone.encoder.layer.0.attention.self.key.lora_A" in str(err.value)


def test_strict_shape_mismatch(model):
    state = adapter_state(model)
    key = "backbone.encoder.layer.0.attention.self.query.lora_A"
    state[key] = torch.zeros(3, 32)
    with pytest.raises(ValueError) as err:
        load_adapter_state(_Model(), state)
    msg = str(err.value)
    assert key in msg and "(3, 32)" in msg and "(2, 32)" in msg


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_rejected(model, bad):
    state = adapter_state(model)
    key = "backbone.encoder.layer.1.attention.self.query.gate_weight"
    state[key][3] = bad
    target = _Model()
    before = adapter_state(target)
    with pytest.raises(ValueError) as err:
        load_adapter_state(target, state)
    assert key in str(err.value)
    # nothing was half-loaded: the target keeps its previous values
    after = adapter_state(target)
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_state_delta_and_apply_delta(model):
    global_ = adapter_state(_Model())
    local = adapter_state(model)
    delta = state_delta(local, global_)
    assert set(delta) == set(global_)
    for k in global_:
        torch.testing.assert_close(delta[k], local[k] - global_[k])  # sign: local - global
    k = "head.bias"
    assert torch.equal(delta[k], local[k] - global_[k]) and not torch.equal(delta[k], global_[k] - local[k])
    restored = apply_delta(global_, delta)
    for k in local:
        torch.testing.assert_close(restored[k], local[k], atol=1e-6, rtol=1e-6)


def test_state_delta_checks_keys_and_shapes(model):
    global_ = adapter_state(model)
    local = dict(global_)
    local["head.bias"] = torch.zeros(4)
    with pytest.raises(ValueError, match="head.bias"):
        state_delta(local, global_)
    local = dict(global_)
    del local["head.weight"]
    with pytest.raises(KeyError, match="head.weight"):
        state_delta(local, global_)
    with pytest.raises(KeyError):
        apply_delta(global_, {k: v for k, v in global_.items() if k != "head.bias"})


def test_state_nbytes():
    state = {
        "a": torch.zeros(3, 4, dtype=torch.float32),
        "b": torch.zeros(5, dtype=torch.bfloat16),
        "c": torch.zeros(2, 2, dtype=torch.float64),
    }
    assert state_nbytes(state) == 3 * 4 * 4 + 5 * 2 + 4 * 8
    arrays = {"a": np.zeros((3, 4), np.float32), "b": np.zeros(7, np.int64)}
    assert state_nbytes(arrays) == 48 + 56


def test_state_nbytes_of_adapter_state(model):
    state = adapter_state(model)
    expected = sum(v.numel() * v.element_size() for v in state.values())
    # by hand: 4 adapters (d=32, r=2) x (2*32 + 32*2 + 32 + 1 + 1) floats, head 32*5 + 5 floats
    assert expected == 4 * (4 * (64 + 64 + 32 + 1 + 1)) + 4 * (160 + 5)
    assert state_nbytes(state) == expected


def test_numpy_round_trip_keeps_shapes(model):
    """Gate biases and structural logits have shape (1,) (DeepSpeed cannot broadcast 0-d
    parameters); the numpy path (Flower messages) must keep every shape, 0-d included."""
    state = adapter_state(model)
    assert not [k for k, v in state.items() if v.dim() == 0]
    assert sum(1 for k, v in state.items() if k.endswith(("gate_bias", "struct_logit")) and v.shape == (1,)) == 8
    back = from_numpy(to_numpy(state))
    scalar = from_numpy(to_numpy({"s": torch.tensor(2.0)}))["s"]
    assert scalar.shape == ()
    for k, v in state.items():
        assert back[k].shape == v.shape, k
    load_adapter_state(_Model(), back)  # strict shapes: would raise on (1,) vs ()
    transposed = {"x": np.arange(6, dtype=np.float32).reshape(2, 3).T}  # non-contiguous input
    assert torch.equal(from_numpy(transposed)["x"], torch.arange(6.0).reshape(2, 3).T)
