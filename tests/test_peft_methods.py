"""Baseline PEFT methods (adapter.method): what each trains, its forward against hand
arithmetic, lower-layer caching, one client round, and the config checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedgate import strategies
from fedgate.config import FedgateConfig
from fedgate.inject import adapter_modules, count_parameters
from fedgate.model import build_reward_model
from fedgate.peft_methods import BottleneckAdapter
from fedgate.state import adapter_state, to_numpy
from fedgate.train import lowest_adapter_layer

HIDDEN, FFN = 32, 64  # tiny-bert: hidden size, intermediate size (2 x hidden)
HEAD = 4 * HIDDEN * 6 + 6  # separate pairing, mean-last pooling: [r_mean, r_last, p*r, |p-r|] -> 5 attributes + alignment logit


def build(method: str, **over):
    cfg = FedgateConfig.from_flat({"model.backbone": "tiny-bert", "adapter.method": method, **over})
    return build_reward_model(cfg.model, cfg.adapter)


def trainable(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def test_bitfit_trains_exactly_the_biases_of_the_chosen_blocks_and_the_head():
    model, _ = build("bitfit", **{"model.top-layers": 1})
    names = set(trainable(model))
    assert names == set(adapter_state(model))
    assert {n for n in names if not n.startswith("head.")} == {
        n for n, _ in model.named_parameters() if n.startswith("backbone.encoder.layer.1.") and n.endswith(".bias")}
    # one BERT block has 7 biases of width d (q, k, v, attention out, 2 LayerNorms, FFN out) and one of the FFN width
    assert count_parameters(model).trainable == 7 * HIDDEN + FFN + HEAD
    assert not adapter_modules(model)


def test_ia3_goes_through_peft_with_its_default_bert_targets():
    model, _ = build("ia3", **{"model.top-layers": 1})
    names = [n for n in trainable(model) if not n.startswith("head.")]
    prefix = "backbone.encoder.layer.1."
    assert names == [prefix + m + ".ia3_l.default" for m in
                     ("attention.self.key", "attention.self.value", "attention.output.dense", "output.dense")]
    # key/value scale their outputs (d, 1); the feed-forward module scales its input (1, d_in)
    shapes = {n.removeprefix(prefix): tuple(p.shape) for n, p in trainable(model).items() if n.startswith(prefix)}
    assert shapes["attention.self.key.ia3_l.default"] == (HIDDEN, 1)
    assert shapes["output.dense.ia3_l.default"] == (1, FFN)
    assert all(torch.equal(p, torch.ones_like(p)) for n, p in trainable(model).items() if "ia3" in n)


@torch.no_grad()
def test_ia3_scales_the_key_outputs_and_the_ffn_inputs():
    model, _ = build("ia3", **{"model.top-layers": 1})
    layer = model.backbone.encoder.layer[1]
    key, ffn_out = layer.attention.self.key, layer.output.dense
    torch.manual_seed(0)
    key.ia3_l["default"].copy_(torch.rand(HIDDEN, 1) + 0.5)
    ffn_out.ia3_l["default"].copy_(torch.rand(1, FFN) + 0.5)
    x, h = torch.randn(3, HIDDEN), torch.randn(3, FFN)
    torch.testing.assert_close(key(x), key.base_layer(x) * key.ia3_l["default"].T)
    torch.testing.assert_close(ffn_out(h), ffn_out.base_layer(h * ffn_out.ia3_l["default"]))


@torch.no_grad()
def test_bottleneck_is_a_residual_down_gelu_up_after_each_sublayer_output():
    base = torch.nn.Linear(6, 5)
    adapter = BottleneckAdapter(base, width=3)
    x = torch.randn(4, 6)
    torch.testing.assert_close(adapter(x), base(x))  # up starts at zero: a fresh adapter changes nothing
    torch.nn.init.normal_(adapter.up.weight)
    y = x @ base.weight.T + base.bias
    hidden = torch.nn.functional.gelu(y @ adapter.down.weight.T + adapter.down.bias)
    torch.testing.assert_close(adapter(x), y + hidden @ adapter.up.weight.T + adapter.up.bias)

    model, _ = build("bottleneck", **{"adapter.r": 4})
    wrapped = [n for n, m in model.named_modules() if isinstance(m, BottleneckAdapter)]
    assert wrapped == [f"backbone.encoder.layer.{i}.{s}" for i in (0, 1) for s in ("attention.output.dense", "output.dense")]
    assert count_parameters(model).trainable == 4 * ((HIDDEN * 4 + 4) + (4 * HIDDEN + HIDDEN)) + HEAD


@pytest.mark.parametrize("method", ["ia3", "bottleneck", "bitfit"])
def test_cached_lower_layers_give_the_same_scores(method):
    model, tok = build(method, **{"model.top-layers": 1})
    assert lowest_adapter_layer(model) == 1
    for p in trainable(model).values():  # move off the identity start so the upper layers matter
        torch.nn.init.normal_(p, std=0.5)
    model.eval()
    enc = tok(["a short prompt", "another, somewhat longer prompt here"], padding=True, return_tensors="pt")
    resp = tok(["an answer", "no"], padding=True, return_tensors="pt")
    batch = {"prompt_input_ids": enc["input_ids"], "prompt_attention_mask": enc["attention_mask"],
             "response_input_ids": resp["input_ids"], "response_attention_mask": resp["attention_mask"]}
    with torch.no_grad():
        full = model(batch)
        cached = {"prompt_hidden": model.lower(enc["input_ids"], enc["attention_mask"], 1),
                  "response_hidden": model.lower(resp["input_ids"], resp["attention_mask"], 1),
                  "prompt_attention_mask": enc["attention_mask"], "response_attention_mask": resp["attention_mask"]}
        torch.testing.assert_close(model(cached, split_at=1), full)


@pytest.mark.parametrize("method", ["ia3", "bottleneck", "bitfit"])
def test_a_client_round_trains_and_replies_only_the_methods_tensors(method):
    from fedgate.federated.client import ClientTask, clear_cache

    clear_cache()
    cfg = FedgateConfig.from_flat({"model.backbone": "tiny-bert", "data.limit": 160, "train.batch-size": 8,
                                   "adapter.method": method})
    task = ClientTask(cfg, 0, 2)
    glob = to_numpy(adapter_state(task.model))
    update = task.train(glob, server_round=2)
    assert set(update.delta) == set(glob) == set(trainable(task.model))
    assert all(np.abs(update.delta[n]).max() > 0 for n in glob if not n.startswith("head."))
    assert update.gate_stats == {}


def test_the_other_methods_refuse_lora_and_gate_rules():
    with pytest.raises(ValueError, match="adapter.method must be one of gated-lora, ia3, bottleneck, bitfit"):
        FedgateConfig.from_flat({"adapter.method": "prefix"})
    with pytest.raises(ValueError, match=r"adapter.method=ia3 .*federation.strategy=exact"):
        strategies.check(FedgateConfig.from_flat({"adapter.method": "ia3", "federation.strategy": "exact"}))
    with pytest.raises(ValueError, match=r"federation.weighting=gates.*needs adapter.method=gated-lora"):
        FedgateConfig.from_flat({"adapter.method": "bitfit", "federation.weighting": "gates"})
    strategies.check(FedgateConfig.from_flat({"adapter.method": "bitfit", "federation.strategy": "median"}))


def test_a_family_without_defaults_or_without_biases_is_refused_by_name():
    with pytest.raises(ValueError, match="adapter.method=bitfit: nothing to train"):
        build("bitfit", **{"model.backbone": "tiny-llama"})  # llama has no bias terms
