"""GatedLoRALinear against peft's LoRA and against hand-written reference formulas."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fedgate.adapters import AdapterSpec, GatedLoRALinear
from fedgate.inject import adapter_modules, inject_adapters
from fedgate.tiny import build_tiny_backbone

# (tiny model, target suffixes, peft fan_in_fan_out): encoder, decoder, GPT-2 Conv1D.
FAMILIES = [
    ("tiny-bert", ("query", "value"), False),
    ("tiny-llama", ("q_proj", "v_proj"), False),
    ("tiny-gpt2", ("c_attn",), True),
]
R, ALPHA = 4, 8.0


def _hidden(model: nn.Module, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state


def _backbone(name: str, tokenizer) -> nn.Module:
    return build_tiny_backbone(name, vocab_size=len(tokenizer), seed=0).eval()


def _reference_delta(layer: GatedLoRALinear, x: torch.Tensor) -> torch.Tensor:
    """s * g * (B A x) * scaling, written out independently of the module's code."""
    h = (x @ layer.lora_A.T @ layer.lora_B.T) * (layer.spec.alpha / layer.spec.r)
    if layer.gate_weight is not None:
        h = h * torch.sigmoid(x @ layer.gate_weight + layer.gate_bias).unsqueeze(-1)
    if layer.struct_logit is not None:
        h = h * torch.sigmoid(layer.struct_logit)
    return h


# --------------------------------------------------------------------------- peft equality
@pytest.mark.parametrize("gates", ["off", "forced-open"])
@pytest.mark.parametrize("name,targets,fan_in_fan_out", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_matches_peft_lora(name, targets, fan_in_fan_out, gates, tiny_tokenizer, text_batch):
    from peft import LoraConfig, inject_adapter_in_model

    base = _backbone(name, tiny_tokenizer)
    base_out = _hidden(base, text_batch)

    cfg = LoraConfig(r=R, lora_alpha=int(ALPHA), target_modules=list(targets), lora_dropout=0.0,
                     fan_in_fan_out=fan_in_fan_out)
    peft_model = inject_adapter_in_model(cfg, _backbone(name, tiny_tokenizer)).eval()
    ours = _backbone(name, tiny_tokenizer)
    if gates == "off":
        spec = AdapterSpec(r=R, alpha=ALPHA, token_gate=False, structural_gate=False)
    else:
        spec = AdapterSpec(r=R, alpha=ALPHA, token_gate=True, structural_gate=True)
    injected = inject_adapters(ours, spec, targets)
    ours.eval()

    g = torch.Generator().manual_seed(1)
    peft_params = dict(peft_model.named_parameters())
    copied = 0
    with torch.no_grad():
        for mod_name in injected:
            a = peft_params[f"{mod_name}.lora_A.default.weight"]
            b = peft_params[f"{mod_name}.lora_B.default.weight"]
            b.copy_(torch.randn(b.shape, generator=g) * 0.5)  # peft starts B at 0: make it non-trivial
            layer = ours.get_submodule(mod_name)
            assert layer.lora_A.shape == a.shape and layer.lora_B.shape == b.shape
            layer.lora_A.copy_(a)
            layer.lora_B.copy_(b)
            if gates == "forced-open":
                layer.gate_bias.fill_(100.0)
                layer.struct_logit.fill_(100.0)
                assert torch.sigmoid(layer.struct_logit).item() == 1.0
            copied += 1
    assert copied == len(injected) == 2 * len(targets)  # two layers

    peft_out = _hidden(peft_model, text_batch)
    our_out = _hidden(ours, text_batch)
    # The adapters must actually change the output, or the comparison proves nothing.
    assert (peft_out - base_out).abs().max() > 1e-3
    torch.testing.assert_close(our_out, peft_out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name,targets", [(f[0], f[1]) for f in FAMILIES], ids=[f[0] for f in FAMILIES])
def test_zero_b_gives_exact_base_output(name, targets, tiny_tokenizer, text_batch):
    base_out = _hidden(_backbone(name, tiny_tokenizer), text_batch)
    model = _backbone(name, tiny_tokenizer)
    inject_adapters(model, AdapterSpec(r=R, token_gate=True, structural_gate=True), targets)
    model.eval()
    for layer in adapter_modules(model).values():
        assert torch.count_nonzero(layer.lora_B) == 0  # B starts at zero
        assert torch.count_nonzero(layer.lora_A) > 0
    assert torch.equal(_hidden(model, text_batch), base_out)


# --------------------------------------------------------------------------- merging
@pytest.mark.parametrize("name,targets", [("tiny-bert", ("query", "value")), ("tiny-gpt2", ("c_attn",))])
def test_merge_equals_unmerged_and_unmerge_restores(name, targets, tiny_tokenizer, text_batch):
    model = _backbone(name, tiny_tokenizer)
    inject_adapters(model, AdapterSpec(r=R, alpha=ALPHA, token_gate=False, structural_gate=True), targets)
    model.eval()
    g = torch.Generator().manual_seed(2)
    layers = adapter_modules(model)
    with torch.no_grad():
        for layer in layers.values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.3)
            layer.struct_logit.fill_(-0.7)  # s = 0.33: a non-trivial structural gate
    original = {n: m.base_layer.weight.detach().clone() for n, m in layers.items()}
    unmerged_out = _hidden(model, text_batch)

    for layer in layers.values():
        layer.merge()
    for n, layer in layers.items():
        assert layer.merged
        assert not torch.allclose(layer.base_layer.weight, original[n])  # the weight really changed
    merged_out = _hidden(model, text_batch)
    torch.testing.assert_close(merged_out, unmerged_out, atol=1e-5, rtol=1e-5)

    for layer in layers.values():
        layer.unmerge()
    for n, layer in layers.items():
        assert not layer.merged
        torch.testing.assert_close(layer.base_layer.weight, original[n], atol=1e-6, rtol=0)
    torch.testing.assert_close(_hidden(model, text_batch), unmerged_out, atol=1e-5, rtol=1e-5)


def test_merge_weight_is_reference_delta():
    base = nn.Linear(6, 5)
    layer = GatedLoRALinear(base, AdapterSpec(r=2, alpha=6.0, token_gate=False, structural_gate=True))
    with torch.no_grad():
        layer.lora_B.normal_()
        layer.struct_logit.fill_(0.4)
    w0 = base.weight.detach().clone()
    expected = w0 + torch.sigmoid(torch.tensor(0.4)) * 3.0 * (layer.lora_B @ layer.lora_A).detach()
    layer.merge()
    torch.testing.assert_close(base.weight.detach(), expected, atol=1e-6, rtol=1e-6)


def test_merge_with_token_gate_raises():
    layer = GatedLoRALinear(nn.Linear(6, 5), AdapterSpec(r=2, token_gate=True))
    w0 = layer.base_layer.weight.detach().clone()
    with pytest.raises(RuntimeError, match="token gate"):
        layer.merge()
    assert not layer.merged
    assert torch.equal(layer.base_layer.weight, w0)


# --------------------------------------------------------------------------- gates
def test_token_gate_is_input_dependent_and_in_unit_interval():
    torch.manual_seed(0)
    layer = GatedLoRALinear(nn.Linear(8, 6), AdapterSpec(r=3, alpha=6.0, token_gate=True, structural_gate=True))
    with torch.no_grad():
        layer.gate_weight.normal_()
        layer.lora_B.normal_()
    x = torch.randn(2, 5, 8)  # (batch, seq, d_in)
    gate = layer.token_gate(x)
    assert gate.shape == (2, 5, 1)
    assert ((gate > 0) & (gate < 1)).all()
    assert gate.std() > 0.05  # different tokens get different gates
    assert len(torch.unique(gate)) == 10
    torch.testing.assert_close(gate.squeeze(-1), torch.sigmoid(x @ layer.gate_weight + layer.gate_bias))

    # The full forward is base + reference gated delta; the batch mean gate is recorded.
    out = layer(x)
    torch.testing.assert_close(out, layer.base_layer(x) + _reference_delta(layer, x), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(layer.last_token_gate_mean, gate.mean())

    # With zero gate weights the gate is the same for every token: sigmoid(bias).
    with torch.no_grad():
        layer.gate_weight.zero_()
    flat = layer.token_gate(x)
    torch.testing.assert_close(flat, torch.full_like(flat, 1 / (1 + math.exp(-layer.spec.gate_init))))


def test_token_gate_off_records_no_statistic():
    layer = GatedLoRALinear(nn.Linear(4, 3), AdapterSpec(r=2, token_gate=False))
    assert layer.token_gate(torch.randn(2, 4)) is None
    layer(torch.randn(2, 4))
    assert layer.last_token_gate_mean is None
    assert "gate_weight" not in layer.adapter_names and "gate_bias" not in layer.adapter_names


@pytest.mark.parametrize("z", [-3.0, -0.5, 0.0, 1.5])
def test_structural_gate_scales_the_update(z):
    torch.manual_seed(3)
    base = nn.Linear(7, 4)
    spec_on = AdapterSpec(r=2, alpha=4.0, token_gate=True, structural_gate=True)
    spec_off = AdapterSpec(r=2, alpha=4.0, token_gate=True, structural_gate=False)
    gated, ungated = GatedLoRALinear(base, spec_on), GatedLoRALinear(base, spec_off)
    with torch.no_grad():
        ungated.lora_B.normal_()
        ungated.gate_weight.normal_()
        for n in ("lora_A", "lora_B", "gate_weight", "gate_bias"):
            getattr(gated, n).copy_(getattr(ungated, n))
        gated.struct_logit.fill_(z)
    x = torch.randn(3, 5, 7)
    with torch.no_grad():
        d_gated = gated(x) - base(x)
        d_one = ungated(x) - base(x)
    assert d_one.abs().max() > 1e-2
    s = 1.0 / (1.0 + math.exp(-z))
    torch.testing.assert_close(d_gated, s * d_one, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(gated.structural_gate(), torch.tensor(s))
    assert ungated.structural_gate().item() == 1.0


def test_conv1d_wrapping_matches_reference():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(4)
    conv = Conv1D(nf=9, nx=5)  # weight (d_in=5, d_out=9)
    layer = GatedLoRALinear(conv, AdapterSpec(r=2, alpha=2.0))
    assert (layer.in_features, layer.out_features) == (5, 9) and layer.is_conv1d
    with torch.no_grad():
        layer.lora_B.normal_()
        layer.gate_weight.normal_()
    x = torch.randn(2, 3, 5)
    torch.testing.assert_close(layer(x), conv(x) + _reference_delta(layer, x), atol=1e-6, rtol=1e-5)


def test_unsupported_layer_and_bad_spec_raise():
    with pytest.raises(TypeError, match="Embedding"):
        GatedLoRALinear(nn.Embedding(4, 3), AdapterSpec())
    with pytest.raises(ValueError, match="r"):
        AdapterSpec(r=0)
    with pytest.raises(ValueError, match="dropout"):
        AdapterSpec(dropout=1.0)
    assert AdapterSpec(r=4, alpha=8.0).scaling == 2.0


def test_frobenius_sq_matches_brute_force():
    torch.manual_seed(5)
    layer = GatedLoRALinear(nn.Linear(11, 7), AdapterSpec(r=3))
    with torch.no_grad():
        layer.lora_B.normal_()
    expected = torch.linalg.matrix_norm(layer.lora_B @ layer.lora_A) ** 2
    torch.testing.assert_close(layer.frobenius_sq(), expected, rtol=1e-5, atol=1e-6)
