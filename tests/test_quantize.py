"""A quantized frozen backbone (``model.quantize``, bitsandbytes): a tiny BERT saved to a
folder and loaded through transformers' own quantization path, adapters in float32 around
the packed layers, training end to end, and the combinations that are refused."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("bitsandbytes")
import bitsandbytes as bnb  # noqa: E402

from fedgate.adapters import GatedLoRALinear  # noqa: E402
from fedgate.config import FedgateConfig  # noqa: E402
from fedgate.model import load_backbone  # noqa: E402
from fedgate.tiny import build_tiny_backbone, tiny_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """tiny-bert written as a pretrained checkpoint (weights and tokenizer)."""
    folder = tmp_path_factory.mktemp("tiny-bert-checkpoint")
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    build_tiny_backbone("tiny-bert", vocab_size=len(tokenizer), hidden=64).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """120 rated rows over 40 prompts (split 80/10/10 by prompt): a quick end-to-end run."""
    path = tmp_path_factory.mktemp("data") / "rows.jsonl"
    rows = [{"prompt": f"How do I use feature {p}?", "response": f"Call it with option {r}; " + "more words " * (p % 4),
             "helpfulness": (p + 2 * r) % 5, "correctness": 2, "coherence": 3, "complexity": 1, "verbosity": r}
            for p in range(40) for r in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("quantize, layer_type, packed", [("4bit", bnb.nn.Linear4bit, torch.uint8),
                                                           ("8bit", bnb.nn.Linear8bitLt, torch.int8)])
def test_quantized_backbone_packs_its_linear_layers_and_stays_close_to_full_precision(
        tiny_folder, quantize, layer_type, packed):
    full, tokenizer = load_backbone(tiny_folder)
    quantized, _ = load_backbone(tiny_folder, quantize=quantize)
    query = quantized.encoder.layer[0].attention.self.query
    assert isinstance(query, layer_type) and query.weight.dtype == packed
    assert quantized.embeddings.word_embeddings.weight.dtype == torch.float32  # only linear layers are packed
    batch = tokenizer(["a short answer", "another answer, a little longer"], return_tensors="pt", padding=True)
    with torch.no_grad():
        a, b = full(**batch).last_hidden_state, quantized(**batch).last_hidden_state
    # quantization error: small against the activations, but not zero (the weights did change)
    assert 0 < (a - b).abs().mean() < 0.2 * a.abs().mean()


def test_adapters_around_4bit_layers_train_in_float32_and_only_they_get_gradients(tiny_folder):
    cfg = FedgateConfig.from_flat({"model.backbone": tiny_folder, "model.quantize": "4bit", "model.top-layers": 0})
    from fedgate.model import build_reward_model

    model, tokenizer = build_reward_model(cfg.model, cfg.adapter)
    adapters = {n: m for n, m in model.named_modules() if isinstance(m, GatedLoRALinear)}
    assert adapters and all(isinstance(m.base_layer, bnb.nn.Linear4bit) for m in adapters.values())
    assert all(m.lora_A.dtype == torch.float32 and m.lora_B.dtype == torch.float32 for m in adapters.values())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or "gate" in n or "struct" in n or n.startswith("head.") for n in trainable)
    m = next(iter(adapters.values()))
    with torch.no_grad():
        m.lora_B.normal_()  # a non-zero update, so lora_A gets a gradient too
    x = torch.randn(3, 5, m.in_features)
    m(x).pow(2).sum().backward()
    assert m.lora_A.grad is not None and m.lora_A.grad.abs().sum() > 0
    assert m.lora_B.grad is not None and m.lora_B.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="cannot merge an adapter into quantized weights"):
        m.merge()


def test_a_4bit_run_trains_exports_as_peft_with_the_same_outputs_and_refuses_a_merge(tiny_folder, small_data,
                                                                                      tmp_path):
    from peft import PeftModel

    from fedgate.cli import main
    from fedgate.export import ExportError, clean_backbone, export
    from fedgate.inject import adapter_modules
    from fedgate.trained import load_trained

    out = tmp_path / "run"
    rc = main(["train", "--out", str(out), "--backbone", tiny_folder, "--data", small_data, "--max-steps", "4",
               "--quiet", "--no-baselines", "--set", "model.quantize=4bit", "--set", "adapter.r=4",
               "--set", "adapter.token-gate=false", "--set", "train.batch-size=8"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 4 and 0.0 <= metrics["test"]["auc"] <= 1.0
    assert json.loads((out / "config.json").read_text())["config"]["model.quantize"] == "4bit"

    trained = load_trained(out)  # rebuilt from the run's config: quantized again
    modules = adapter_modules(trained.model)
    assert all(isinstance(m.base_layer, bnb.nn.Linear4bit) for m in modules.values())
    with torch.no_grad():
        for m in modules.values():
            m.lora_B.normal_(std=0.2)  # 4 steps barely move B: make the adapters matter
    folder = export(trained, "peft", tmp_path / "peft")
    loaded = PeftModel.from_pretrained(clean_backbone(trained.model), str(folder)).eval()
    batch = trained.tokenizer(["How do I sort a list?", "Use sorted()."], padding=True, return_tensors="pt")
    with torch.no_grad():
        want = trained.model.backbone(**batch).last_hidden_state
        got = loaded(**batch).last_hidden_state
    assert torch.allclose(got, want, atol=1e-4)
    with pytest.raises(ExportError, match="cannot export as merged: the backbone is quantized"):
        export(trained, "merged", tmp_path / "merged")


@pytest.mark.parametrize("keys, reason", [
    ({"model.backbone": "tiny-bert"}, "is built in memory"),
    ({"adapter.method": "ia3"}, "needs adapter.method=gated-lora"),
    ({"engine.name": "deepspeed", "engine.zero-stage": 3}, "cannot run under ZeRO-3"),
    ({"model.quantize": "2bit"}, "model.quantize must be one of"),
    ({"model.gguf-file": "model.Q4_1.gguf"}, "cannot quantize a GGUF checkpoint"),
])
def test_combinations_a_quantized_backbone_cannot_serve_are_refused_with_the_reason(tiny_folder, keys, reason):
    flat = {"model.backbone": tiny_folder, "model.quantize": "4bit", **keys}
    with pytest.raises(ValueError, match=reason):
        FedgateConfig.from_flat(flat)


def test_deepspeed_zero2_trains_the_adapters_around_a_4bit_backbone(tiny_folder, small_data, tmp_path):
    from safetensors.torch import load_file

    from fedgate.cli import main

    out = tmp_path / "zero2"
    rc = main(["train", "--out", str(out), "--backbone", tiny_folder, "--data", small_data, "--max-steps", "2",
               "--quiet", "--no-baselines", "--set", "model.quantize=4bit", "--set", "adapter.r=4",
               "--set", "train.batch-size=8", "--set", "engine.name=deepspeed", "--set", "engine.zero-stage=2"])
    assert rc == 0
    state = load_file(str(out / "adapters.safetensors"))
    lora_b = [t for k, t in state.items() if k.endswith("lora_B")]
    assert lora_b and any(t.abs().sum() > 0 for t in lora_b)  # B starts at zero: the steps moved it


def test_the_memory_planner_never_picks_zero3_for_a_quantized_backbone(tiny_folder):
    from fedgate.engine import plan_engine
    from fedgate.model import build_reward_model

    cfg = FedgateConfig.from_flat({"model.backbone": tiny_folder, "model.quantize": "4bit", "engine.name": "deepspeed",
                                   "engine.memory-gb": 1e-6})  # a budget nothing fits
    model, _ = build_reward_model(cfg.model, cfg.adapter)
    plan = plan_engine(model, cfg)
    assert plan.stage == 2 and plan.offload_optimizer and not plan.offload_params
