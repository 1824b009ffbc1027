"""Client-side parts of the strategies: what is shared, FFA's seeded A, pruning switches,
FedProx's proximal term, SCAFFOLD's correction and control variates, personal gates."""

import numpy as np
import pytest
import torch

from fedgate.batching import encode_split
from fedgate.federated.client import ClientTask, clear_cache
from fedgate.federated.client_rules import (configure_adapters, control_correction, mean_gradient, proximal_term,
                                            shared_keys)
from fedgate.federated.shards import client_shard
from fedgate.inject import adapter_modules
from fedgate.model import build_reward_model
from fedgate.state import adapter_state, to_numpy, trainable_names

KEYS = ["m.lora_A", "m.lora_B", "m.gate_weight", "m.struct_logit", "n.lora_A", "n.lora_B", "head.bias"]


def test_shared_keys_follow_the_strategy(tiny_cfg):
    assert shared_keys(KEYS, tiny_cfg()) == KEYS
    assert shared_keys(KEYS, tiny_cfg(**{"federation.strategy": "ffa"})) == [
        "m.lora_B", "m.gate_weight", "m.struct_logit", "n.lora_B", "head.bias"]
    assert "m.struct_logit" not in shared_keys(KEYS, tiny_cfg(**{"federation.personal-gates": True}))
    assert shared_keys(KEYS, tiny_cfg(), pruned=["m"]) == ["n.lora_A", "n.lora_B", "head.bias"]


def test_ffa_draws_the_same_a_everywhere_and_freezes_it(tiny_cfg):
    cfg = tiny_cfg(**{"federation.strategy": "ffa"})
    a = []
    for seed in (1, 2):  # two processes that built their models differently
        torch.manual_seed(seed)
        model, _ = build_reward_model(cfg.model, cfg.adapter)
        configure_adapters(model, cfg)
        a.append({n: m.lora_A.detach().clone() for n, m in adapter_modules(model).items()})
        assert all(not m.lora_A.requires_grad and m.lora_B.requires_grad for m in adapter_modules(model).values())
    for name in a[0]:
        torch.testing.assert_close(a[0][name], a[1][name], rtol=0, atol=0)
    first = next(iter(a[0].values()))
    assert first.abs().max() <= 1.0 / np.sqrt(first.shape[1])  # nn.Linear's init bound


def test_pruned_adapters_are_off_and_frozen_until_unpruned(tiny_cfg):
    cfg = tiny_cfg()
    model, _ = build_reward_model(cfg.model, cfg.adapter)
    name = next(iter(adapter_modules(model)))
    configure_adapters(model, cfg, pruned=[name])
    m = adapter_modules(model)[name]
    assert not m.enabled and not any(getattr(m, p).requires_grad for p in m.adapter_names)
    configure_adapters(model, cfg)
    assert m.enabled and all(getattr(m, p).requires_grad for p in m.adapter_names)


def test_proximal_term_and_control_correction_by_hand(tiny_cfg):
    cfg = tiny_cfg()
    model, _ = build_reward_model(cfg.model, cfg.adapter)
    start = {k: v.clone() for k, v in adapter_state(model).items()}
    with torch.no_grad():
        model.head.bias.add_(1.0)  # 6 entries (5 attributes, the alignment logit), each 1 away
    assert float(proximal_term(model, start, mu=0.2)()) == pytest.approx(0.5 * 0.2 * 6)
    c = {"head.bias": torch.full((6,), 0.3)}
    c_i = {"head.bias": torch.full((6,), 0.1)}
    model.head.bias.grad = torch.ones(6)
    control_correction(model, c, c_i)()
    torch.testing.assert_close(model.head.bias.grad, torch.full((6,), 1.2))


def test_mean_gradient_is_the_full_batch_gradient(tiny_cfg):
    cfg = tiny_cfg(**{"loss.beta": 0.0, "train.cache-lower-layers": False})  # the KL term is not batch-additive
    model, tok = build_reward_model(cfg.model, cfg.adapter)
    split = encode_split(client_shard(cfg, 0, 2)["train"].select(range(20)), tok, cfg.model)
    keys = trainable_names(model)
    per_batch = mean_gradient(model, split, cfg, tok.pad_token_id, torch.device("cpu"), keys)
    full_cfg = tiny_cfg(**{"loss.beta": 0.0, "train.cache-lower-layers": False, "train.batch-size": 20})
    full = mean_gradient(model, split, full_cfg, tok.pad_token_id, torch.device("cpu"), keys)
    assert set(per_batch) == set(keys)
    for k in keys:
        torch.testing.assert_close(per_batch[k], full[k], atol=2e-6, rtol=1e-4)
    assert any(float(v.abs().max()) > 0 for v in full.values())


def test_mean_gradient_on_pairs_is_the_bradley_terry_gradient_of_every_pair(tiny_cfg):
    from fedgate.batching import encode_pairs, make_batch
    from fedgate.losses import bradley_terry_loss
    from fedgate.model import ALIGNMENT
    from tests.test_pairwise import _pairs

    cfg = tiny_cfg(**{"loss.beta": 0.0, "loss.lambda-f": 0.0, "loss.lambda-s": 0.0,
                      "train.cache-lower-layers": False, "train.batch-size": 3})
    model, tok = build_reward_model(cfg.model, cfg.adapter)
    with torch.no_grad():  # a head that scores, so the pairs' gradients are not all equal
        model.head.weight.normal_(0, 0.5)
    split = encode_pairs(_pairs(8), tok, cfg.model)
    keys = trainable_names(model)
    got = mean_gradient(model, split, cfg, tok.pad_token_id, torch.device("cpu"), keys)  # 3 + 3 + 2 pairs
    model.zero_grad(set_to_none=True)
    model.eval()
    score = model(make_batch(split, np.arange(16), tok.pad_token_id, torch.device("cpu")))[:, ALIGNMENT]
    bradley_terry_loss(score[0::2], score[1::2]).backward()  # all 8 pairs at once, by hand
    for n, p in model.named_parameters():
        if n in keys and p.grad is not None:
            torch.testing.assert_close(got[n], p.grad, atol=2e-6, rtol=1e-4)
    assert float(got["head.weight"].abs().max()) > 0


def test_fedprox_keeps_the_client_closer_to_the_global_model(tiny_cfg):
    norms = {}
    for strategy, mu in (("fedavg", 0.0), ("fedprox", 50.0)):
        clear_cache()
        cfg = tiny_cfg(**{"federation.strategy": strategy, "train.proximal-mu": mu, "train.head-init": "zero"})
        task = ClientTask(cfg, 0, 2)
        glob = to_numpy(adapter_state(task.model))
        update = task.train(glob, server_round=2)
        norms[strategy] = np.sqrt(sum(float((v ** 2).sum()) for v in update.delta.values()))
    assert norms["fedprox"] < 0.9 * norms["fedavg"], norms


def test_scaffold_and_personal_gates_in_a_local_round(tiny_cfg):
    clear_cache()
    cfg = tiny_cfg(**{"federation.strategy": "scaffold", "federation.personal-gates": True})
    task = ClientTask(cfg, 0, 2)
    full = to_numpy(adapter_state(task.model))
    glob = {k: full[k] for k in shared_keys(full, cfg)}
    c = {k: np.zeros_like(v) for k, v in glob.items()}
    first = task.train(glob, server_round=2, control=(c, {}))
    assert set(first.delta) == set(glob) and not any(k.endswith("struct_logit") for k in first.delta)
    assert set(first.personal) == {k for k in full if k.endswith("struct_logit")}
    for k, v in first.control.items():  # c_i starts at 0, so the first delta is c_i+ itself
        np.testing.assert_array_equal(first.control_delta[k], v)
    second = task.train(glob, server_round=3, control=(c, first.control), personal=first.personal)
    for k, v in second.control.items():
        np.testing.assert_allclose(second.control_delta[k], v - first.control[k], atol=1e-7)
    with pytest.raises(KeyError, match="different set of tensors"):
        task.train(full, server_round=4, control=(c, {}))  # personal gates must not arrive from the server
