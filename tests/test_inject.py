"""Adapter injection by suffix/regex/layer, freezing, parameter counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedgate.adapters import AdapterSpec, GatedLoRALinear
from fedgate.inject import (
    adapter_modules,
    count_parameters,
    default_targets,
    freeze_except,
    inject_adapters,
    layer_index,
    match_targets,
)
from fedgate.tiny import build_tiny_backbone

VOCAB = 100  # no tokeniser needed here: keep the embedding small


@pytest.fixture
def bert():
    return build_tiny_backbone("tiny-bert", vocab_size=VOCAB)


def test_suffix_targets_on_bert(bert):
    names = inject_adapters(bert, AdapterSpec(r=2), ("query", "value"))
    assert names == [
        "encoder.layer.0.attention.self.query",
        "encoder.layer.0.attention.self.value",
        "encoder.layer.1.attention.self.query",
        "encoder.layer.1.attention.self.value",
    ]
    assert list(adapter_modules(bert)) == names
    for n in names:
        assert isinstance(bert.get_submodule(n), GatedLoRALinear)
        assert isinstance(bert.get_submodule(n).base_layer, nn.Linear)
    # key and dense layers were left alone
    assert isinstance(bert.get_submodule("encoder.layer.0.attention.self.key"), nn.Linear)
    assert isinstance(bert.get_submodule("encoder.layer.0.attention.output.dense"), nn.Linear)


def test_suffix_matches_whole_components_only(bert):
    # "uery" is a suffix of the string "query" but not a module-name component.
    with pytest.raises(ValueError):
        inject_adapters(bert, AdapterSpec(r=2), ("uery",))
    # multi-component suffixes work
    names = match_targets(bert, ("self.query",))
    assert names == ["encoder.layer.0.attention.self.query", "encoder.layer.1.attention.self.query"]


def test_regex_targets(bert):
    names = inject_adapters(bert, AdapterSpec(r=2), regex=r"attention\.self\.(key|value)$")
    assert names == [
        "encoder.layer.0.attention.self.key",
        "encoder.layer.0.attention.self.value",
        "encoder.layer.1.attention.self.key",
        "encoder.layer.1.attention.self.value",
    ]


def test_layers_restriction(bert):
    names = inject_adapters(bert, AdapterSpec(r=2), ("query", "value"), layers=[1])
    assert names == ["encoder.layer.1.attention.self.query", "encoder.layer.1.attention.self.value"]
    assert isinstance(bert.get_submodule("encoder.layer.0.attention.self.query"), nn.Linear)


def test_layers_restriction_on_decoder():
    llama = build_tiny_backbone("tiny-llama", vocab_size=VOCAB)
    names = inject_adapters(llama, AdapterSpec(r=2), default_targets("llama"), layers=(0,))
    assert names == ["layers.0.self_attn.q_proj", "layers.0.self_attn.v_proj"]


def test_nothing_matched_raises_listing_linear_layers(bert):
    with pytest.raises(ValueError) as err:
        inject_adapters(bert, AdapterSpec(r=2), ("q_proj",))
    msg = str(err.value)
    assert "q_proj" in msg
    for available in ("query", "key", "value", "dense"):
        assert available in msg
    assert not adapter_modules(bert)  # nothing was changed
    with pytest.raises(ValueError):
        inject_adapters(bert, AdapterSpec(r=2), ("query",), layers=[7])  # no layer 7
    with pytest.raises(ValueError):
        match_targets(bert)  # neither suffixes nor regex


def test_default_targets():
    assert default_targets("bert") == ("query", "value")
    assert default_targets("gpt2") == ("c_attn",)
    with pytest.raises(ValueError, match="t5"):
        default_targets("t5")


class _Tiny(nn.Module):
    """A backbone plus a head, as the reward model composes them."""

    def __init__(self):
        super().__init__()
        self.backbone = build_tiny_backbone("tiny-bert", vocab_size=VOCAB)
        self.head = nn.Linear(32, 5)


def test_freeze_except_leaves_only_adapters_and_head_trainable():
    model = _Tiny()
    names = inject_adapters(model.backbone, AdapterSpec(r=2), ("query", "value"))
    freeze_except(model, ("head.",))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {f"backbone.{m}.{p}" for m in names
                for p in ("lora_A", "lora_B", "gate_weight", "gate_bias", "struct_logit")}
    expected |= {"head.weight", "head.bias"}
    assert trainable == expected
    # the wrapped base layers are frozen too
    assert not model.backbone.get_submodule(names[0]).base_layer.weight.requires_grad


def test_freeze_except_without_gates():
    model = _Tiny()
    names = inject_adapters(model.backbone, AdapterSpec(r=2, token_gate=False, structural_gate=False), ("value",))
    freeze_except(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"backbone.{m}.{p}" for m in names for p in ("lora_A", "lora_B")}


@pytest.mark.parametrize("token_gate,structural_gate", [(True, True), (False, True), (False, False)])
def test_count_parameters_by_hand(token_gate, structural_gate):
    model = _Tiny()
    total_before = sum(p.numel() for p in model.parameters())
    r, d = 3, 32
    spec = AdapterSpec(r=r, token_gate=token_gate, structural_gate=structural_gate)
    names = inject_adapters(model.backbone, spec, ("query", "value", "intermediate.dense"))
    freeze_except(model, ("head.",))
    # query/value: d -> d; intermediate.dense: d -> 2d (intermediate_size = 2 * hidden)
    shapes = [(d, 2 * d) if n.endswith("intermediate.dense") else (d, d) for n in names]
    assert len(shapes) == 6
    per = [r * d_in + d_out * r + (d_in + 1 if token_gate else 0) + (1 if structural_gate else 0)
           for d_in, d_out in shapes]
    head = 32 * 5 + 5
    counts = count_parameters(model)
    assert counts.trainable == sum(per) + head
    assert counts.backbone == total_before - head
    assert counts.percent == pytest.approx(100.0 * counts.trainable / counts.backbone)


def test_count_parameters_gpt2_conv1d():
    gpt2 = build_tiny_backbone("tiny-gpt2", vocab_size=VOCAB)
    inject_adapters(gpt2, AdapterSpec(r=2), ("c_attn",))
    freeze_except(gpt2)
    d_in, d_out = 32, 96  # c_attn: hidden -> 3 * hidden
    assert count_parameters(gpt2).trainable == 2 * (2 * d_in + d_out * 2 + d_in + 1 + 1)


@pytest.mark.parametrize("name,expected", [
    ("encoder.layer.3.attention.self.query", 3),
    ("layers.10.self_attn.q_proj", 10),
    ("h.0.attn.c_attn", 0),
    ("backbone.encoder.layer.1.output.dense", 1),
    ("2.linear", 2),
    ("pooler.dense", None),
    ("layer3.query", None),
])
def test_layer_index(name, expected):
    assert layer_index(name) == expected


def test_injected_forward_still_runs_and_gradients_reach_adapters(bert):
    inject_adapters(bert, AdapterSpec(r=2), ("query",))
    freeze_except(bert)
    ids = torch.randint(0, VOCAB, (2, 6))
    bert(input_ids=ids).last_hidden_state.sum().backward()
    for layer in adapter_modules(bert).values():
        assert layer.lora_B.grad is not None and layer.lora_B.grad.abs().sum() > 0
        assert layer.base_layer.weight.grad is None


def test_second_injection_never_nests_adapters(bert):
    first = inject_adapters(bert, AdapterSpec(r=2), ("query",))
    # this regex also matches the names of the existing adapters' base layers
    second = inject_adapters(bert, AdapterSpec(r=2), regex=r"attention\.self")
    assert second == [n for layer in (0, 1) for n in (f"encoder.layer.{layer}.attention.self.key",
                                                       f"encoder.layer.{layer}.attention.self.value")]
    for n in first:
        assert isinstance(bert.get_submodule(n).base_layer, nn.Linear)
    assert len(adapter_modules(bert)) == 6
    with pytest.raises(ValueError):
        inject_adapters(bert, AdapterSpec(r=2), ("query",))  # already wrapped: nothing left to match


def test_all_linear_selects_every_block_linear_but_not_pooler_or_head():
    from fedgate.model import RewardModel
    from fedgate.tiny import build_tiny_backbone

    model = RewardModel(build_tiny_backbone("tiny-bert"))
    names = match_targets(model.backbone, ("all-linear",))
    per_layer = {"attention.self.query", "attention.self.key", "attention.self.value",
                 "attention.output.dense", "intermediate.dense", "output.dense"}
    assert set(names) == {f"encoder.layer.{i}.{s}" for i in range(2) for s in per_layer}
    llama = match_targets(build_tiny_backbone("tiny-llama"), ("all-linear",), layers=[1])
    assert {n.rsplit(".", 1)[-1] for n in llama} == {"q_proj", "k_proj", "v_proj", "o_proj",
                                                     "gate_proj", "up_proj", "down_proj"}
