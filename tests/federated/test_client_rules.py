"""What a round asks of a client's model for any strategy: which tensors are shared, and
pruned adapters switched off and frozen."""

from fedgate.federated.client_rules import configure_adapters, shared_keys
from fedgate.inject import adapter_modules
from fedgate.model import build_reward_model

KEYS = ["m.lora_A", "m.lora_B", "m.gate_weight", "m.struct_logit", "n.lora_A", "n.lora_B", "head.bias"]


def test_shared_keys_follow_the_strategy(tiny_cfg):
    assert shared_keys(KEYS, tiny_cfg()) == KEYS
    assert shared_keys(KEYS, tiny_cfg(**{"federation.strategy": "ffa"})) == [
        "m.lora_B", "m.gate_weight", "m.struct_logit", "n.lora_B", "head.bias"]
    assert "m.struct_logit" not in shared_keys(KEYS, tiny_cfg(**{"federation.personal-gates": True}))
    assert shared_keys(KEYS, tiny_cfg(), pruned=["m"]) == ["n.lora_A", "n.lora_B", "head.bias"]


def test_pruned_adapters_are_off_and_frozen_until_unpruned(tiny_cfg):
    cfg = tiny_cfg()
    model, _ = build_reward_model(cfg.model, cfg.adapter)
    name = next(iter(adapter_modules(model)))
    configure_adapters(model, cfg, pruned=[name])
    m = adapter_modules(model)[name]
    assert not m.enabled and not any(getattr(m, p).requires_grad for p in m.adapter_names)
    configure_adapters(model, cfg)
    assert m.enabled and all(getattr(m, p).requires_grad for p in m.adapter_names)
