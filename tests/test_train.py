"""Training loop, batching and lower-layer caching on a tiny BERT built from a config."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedgate.batching import encode_split, iterate_batches, make_batch, row_lengths
from fedgate.config import FedgateConfig
from fedgate.data.schema import rows_to_dataset
from fedgate.inject import adapter_modules
from fedgate.model import build_reward_model
from fedgate.evaluation import evaluate, predict
from fedgate.train import fit, prepare_cache


def _rows(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda".split()
    rows = []
    for i in range(n):
        good = i % 2 == 0
        body = " ".join(rng.choice(words, size=int(rng.integers(3, 20))))
        rows.append({"prompt": f"What does item {i % 7} do?", "response": (body + " good.") if good else body,
                     "helpfulness": 4 if good else 1, "correctness": 3, "coherence": 3, "complexity": 2,
                     "verbosity": 2, "kind": "real" if good else "bad", "domain": ""})
    return rows


def _cfg(**flat) -> FedgateConfig:
    base = {"model.backbone": "tiny-bert", "model.layers": "1", "adapter.r": 4, "train.batch-size": 8,
            "train.max-steps": 30, "train.eval-every": 10, "train.lr-adapter": 5e-3, "train.lr-head": 5e-3}
    return FedgateConfig.from_flat({**base, **flat})


@pytest.fixture()
def setup():
    cfg = _cfg()
    model, tok = build_reward_model(cfg.model, cfg.adapter)
    train = encode_split(rows_to_dataset(_rows(64)), tok, cfg.model)
    val = encode_split(rows_to_dataset(_rows(32, seed=1)), tok, cfg.model)
    return cfg, model, tok, train, val


def test_cached_lower_layers_give_the_same_predictions(setup):
    cfg, model, tok, train, _ = setup
    with torch.no_grad():  # non-zero adapters so the upper layers really differ from the base
        for m in adapter_modules(model).values():
            m.lora_B.normal_(0, 0.1)
        model.head.weight.normal_(0, 0.1)
    plain = predict(model, train, cfg, tok.pad_token_id, torch.device("cpu"))
    split_at = prepare_cache(model, [train], cfg, tok.pad_token_id, torch.device("cpu"), progress=False)
    assert split_at == 1 and train.hidden is not None
    cached = predict(model, train, cfg, tok.pad_token_id, torch.device("cpu"))
    np.testing.assert_allclose(cached, plain, atol=2e-3)  # the cache is float16
    assert len(train.hidden) == len(train.texts)


def test_fit_lowers_the_loss_and_reports_gate_stats(setup):
    cfg, model, tok, train, val = setup
    dev = torch.device("cpu")
    before, _ = evaluate(model, val, cfg, tok.pad_token_id, dev)
    result = fit(model, train, cfg, tok.pad_token_id, dev, validation=val, progress=False)
    assert result.steps == 30 and result.examples_seen == 30 * 8
    assert [h["step"] for h in result.history] == [10, 20, 30]
    assert result.history[-1]["train_loss"] < 0.9 * (2.0 ** 2)  # far below predicting the mean badly
    assert set(result.gate_stats) == set(adapter_modules(model))
    for stats in result.gate_stats.values():
        assert 0.0 < stats["token_gate"] < 1.0 and 0.0 < stats["structural_gate"] < 1.0
    after, _ = evaluate(model, val, cfg, tok.pad_token_id, dev)
    assert after["mae"] < before["mae"]


def test_gate_record_spans_prompt_and_response_and_skips_padding(setup):
    cfg, model, tok, train, _ = setup
    with torch.no_grad():
        for m in adapter_modules(model).values():
            m.gate_weight.normal_(0, 1.0)
    rows = np.arange(4)
    batch = make_batch(train, rows, tok.pad_token_id, torch.device("cpu"))
    model.eval()
    with torch.no_grad():
        model(batch)
    name, m = next(iter(adapter_modules(model).items()))
    recorded = float(m.last_token_gate_mean)
    # recompute by hand: gates of the unpadded prompt and response tokens of the 4 rows
    seen = []
    hook = m.register_forward_hook(lambda mod, inp, out: seen.append(mod.token_gate(inp[0]).squeeze(-1)))
    with torch.no_grad():
        model(batch)
    hook.remove()
    masks = [batch["prompt_attention_mask"], batch["response_attention_mask"]]
    total = sum(float((g * mk).sum()) for g, mk in zip(seen, masks))
    count = sum(float(mk.sum()) for mk in masks)
    assert len(seen) == 2
    assert recorded == pytest.approx(total / count, rel=1e-5)
    padded_mean = float(torch.cat([g.flatten() for g in seen]).mean())
    assert recorded != pytest.approx(padded_mean, rel=1e-4)  # padding would change it


def test_length_bucketed_batches_cover_every_row_once(setup):
    _, _, _, train, _ = setup
    lengths = row_lengths(train)
    batches = iterate_batches(len(train), 8, np.random.default_rng(0), lengths, pool=2)
    rows = np.concatenate(batches)
    assert sorted(rows.tolist()) == list(range(len(train)))
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    random_spread = np.mean([np.ptp(lengths[b]) for b in iterate_batches(len(train), 8, np.random.default_rng(0))])
    assert spread < random_spread


def test_lr_schedules_warm_up_then_decay_or_stay():
    from fedgate.train import lr_factor

    assert [lr_factor(s, 10, 2) for s in (0, 1)] == [0.5, 1.0]
    assert lr_factor(2, 10, 2) == 1.0 and lr_factor(9, 10, 2) < 0.05  # cosine: near 0 at the end
    assert [lr_factor(s, 10, 2, "constant") for s in (0, 2, 9)] == [0.5, 1.0, 1.0]
