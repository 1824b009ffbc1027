"""Training engines: the memory-budget plan, DeepSpeed config checks, and DeepSpeed ZeRO
training that matches the plain torch engine (CPU, gloo, one process)."""

import json

import numpy as np
import pytest
import torch

from fedgate.config import FedgateConfig
from fedgate.engine import load_deepspeed_config, memory_estimates, plan_engine
from fedgate.memory import resident_mib
from fedgate.model import build_reward_model

TINY = {"model.backbone": "tiny-bert", "train.batch-size": 8}


@pytest.fixture(scope="module")
def tiny_model():
    cfg = FedgateConfig.from_flat(TINY)
    return build_reward_model(cfg.model, cfg.adapter)[0]


def test_plan_follows_the_memory_budget(tiny_model):
    est = memory_estimates(tiny_model, FedgateConfig.from_flat(TINY))
    assert est["zero0"] > est["zero2_offload"] > est["zero3_offload"] > 0

    def plan(gb):
        return plan_engine(tiny_model, FedgateConfig.from_flat({**TINY, "engine.memory-gb": gb}))

    roomy = plan(100.0)
    assert (roomy.stage, roomy.offload_optimizer, roomy.offload_params) == (0, False, False)
    mid = plan((est["zero2_offload"] + est["zero0"]) / 2 / 0.9)  # only the optimizer offload fits
    assert (mid.stage, mid.offload_optimizer, mid.offload_params) == (2, True, False)
    tight = plan((est["zero3_offload"] + est["zero2_offload"]) / 2 / 0.9)  # only weight offload fits
    assert (tight.stage, tight.offload_params) == (3, True)
    hopeless = plan(est["zero3_offload"] / 10)
    assert hopeless.stage == 3 and "nothing fits" in hopeless.reason
    explicit = plan_engine(tiny_model, FedgateConfig.from_flat({**TINY, "engine.zero-stage": 2}))
    assert explicit.stage == 2 and explicit.reason == "engine.zero-stage"
    assert plan_engine(tiny_model, FedgateConfig.from_flat(TINY)).stage == 0  # no budget


def test_engine_config_checks():
    with pytest.raises(ValueError, match="engine.zero-stage must be 0-3"):
        FedgateConfig.from_flat({"engine.zero-stage": 4})
    with pytest.raises(ValueError, match="engine.offload-params needs ZeRO stage 3"):
        FedgateConfig.from_flat({"engine.zero-stage": 2, "engine.offload-params": True})
    with pytest.raises(ValueError, match="engine.name must be one of"):
        FedgateConfig.from_flat({"engine.name": "megatron"})


@pytest.mark.parametrize("text, match", [
    ('{"zero_optimization": {"stage": 7}}', "stage must be 0, 1, 2 or 3, got 7"),
    ('{"zero_optimisation": {"stage": 2}}', r"unknown DeepSpeed keys \['zero_optimisation'\]"),
    ('{"train_batch_size": 10, "train_micro_batch_size_per_gpu": 4}', "train_batch_size 10 != "),
    ('{"zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}}}', "offload_param needs stage 3"),
    ('{"optimizer": {"type": "Adam"}}', "remove them"),
    ('{"bf16": {"enabled": true}}', "use train.bf16=true"),
    ('{"zero_optimization": {"stage": 2},\n "bf16": }', r":2:\d+: not valid JSON"),
    ('[1, 2]', "must be a JSON object"),
])
def test_bad_deepspeed_config_files_are_named(tmp_path, text, match):
    path = tmp_path / "ds.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_deepspeed_config(path, FedgateConfig.from_flat(TINY))


def test_a_good_deepspeed_file_gets_batch_keys_from_train(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    ds = load_deepspeed_config(path, FedgateConfig.from_flat({**TINY, "train.grad-accum": 2}))
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (8, 2, 16)
    with pytest.raises(FileNotFoundError, match="no file"):
        load_deepspeed_config(tmp_path / "missing.json", FedgateConfig())


def _train(cfg, stage=None, steps=4):
    """Train tiny-bert for a few steps with the configured engine; returns (loss, state, stepper)."""
    from fedgate.batching import encode_split
    from fedgate.data import build_embedded_dataset
    from fedgate.engine import close_stepper, make_stepper
    from fedgate.state import adapter_state
    from fedgate.train import fit

    torch.manual_seed(0)
    model, tok = build_reward_model(cfg.model, cfg.adapter)
    split = encode_split(build_embedded_dataset(0)["train"].select(range(48)), tok, cfg.model)
    stepper = make_stepper(model, cfg)
    result = fit(model, split, cfg, tok.pad_token_id, torch.device("cpu"), progress=False, stepper=stepper)
    state = adapter_state(model)
    partitioned = [n for n, p in model.named_parameters() if not p.requires_grad and hasattr(p, "ds_id")
                   and p.numel() == 0]
    close_stepper(stepper)
    return result, state, partitioned


@pytest.fixture(scope="module")
def plain_run():
    cfg = FedgateConfig.from_flat({**TINY, "train.max-steps": 4, "train.cache-lower-layers": False})
    return _train(cfg)


@pytest.mark.parametrize("stage", [0, 2, 3])
def test_deepspeed_stages_match_the_plain_engine(plain_run, stage):
    cfg = FedgateConfig.from_flat({**TINY, "train.max-steps": 4, "train.cache-lower-layers": False,
                                   "engine.name": "deepspeed", "engine.zero-stage": stage})
    result, state, partitioned = _train(cfg)
    ref_result, ref_state, _ = plain_run
    assert result.steps == ref_result.steps == 4
    assert result.train_loss == pytest.approx(ref_result.train_loss, abs=1e-5)
    for k, v in ref_state.items():
        np.testing.assert_allclose(state[k].numpy(), v.numpy(), atol=1e-5, err_msg=k)
    assert set(result.gate_stats) == set(ref_result.gate_stats)
    if stage == 3:  # the frozen backbone's large weights are really partitioned (empty locally)
        assert "backbone.embeddings.word_embeddings.weight" in partitioned
    else:
        assert partitioned == []


def test_bf16_autocast_trains_under_deepspeed(plain_run):
    cfg = FedgateConfig.from_flat({**TINY, "train.max-steps": 2, "train.cache-lower-layers": False,
                                   "train.bf16": True, "engine.name": "deepspeed", "engine.zero-stage": 2})
    result, state, _ = _train(cfg, steps=2)
    assert result.steps == 2 and np.isfinite(result.train_loss)
    assert all(v.dtype == torch.float32 for v in state.values())  # weights stay fp32; autocast computes


@pytest.mark.parametrize("stage", [2, 3])
@pytest.mark.integration
def test_rounds_release_their_engine_and_model(stage):
    """A simulation actor plays many rounds in one process: each round's DeepSpeed engine (and
    under ZeRO-3 the rebuilt model) must be freed, and resident memory must stay flat."""
    import gc
    import weakref

    from fedgate.federated.client import ClientTask, clear_cache
    from fedgate.state import adapter_state, to_numpy

    cfg = FedgateConfig.from_flat({**TINY, "data.limit": 80, "train.epochs": 1, "engine.name": "deepspeed",
                                   "engine.zero-stage": stage})
    clear_cache()
    model, _ = build_reward_model(cfg.model, cfg.adapter)
    state = to_numpy(adapter_state(model))
    del model
    models, rss = [], []
    for rnd in range(1, 5):
        task = ClientTask(cfg, 0, 2)
        models.append(weakref.ref(task.model))
        update = task.train(state, rnd)
        state = {k: v + update.delta[k] for k, v in state.items()}
        del task, update
        gc.collect()
        rss.append(resident_mib())
    clear_cache()
    gc.collect()
    assert all(ref() is None for ref in models), "a round's model is still referenced after its engine closed"
    assert rss[-1] - rss[1] < 25.0, f"resident memory grew over rounds 2-4: {[round(r) for r in rss]} MiB"


def test_deepspeed_batch_keys_split_the_batch_over_the_ranks(tmp_path):
    from fedgate.engine import EnginePlan, deepspeed_config

    cfg = FedgateConfig.from_flat({**TINY, "train.grad-accum": 2, "engine.name": "deepspeed",
                                   "engine.world-size": 2})
    ds = deepspeed_config(cfg, EnginePlan(2, False, False, 0.0, ""), world_size=2)
    batch_keys = (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"])
    assert batch_keys == (4, 2, 16)
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    ds = load_deepspeed_config(path, cfg, world_size=2)
    assert (ds["train_micro_batch_size_per_gpu"], ds["train_batch_size"]) == (4, 16)
    path.write_text(json.dumps({"train_batch_size": 8, "train_micro_batch_size_per_gpu": 8}))
    with pytest.raises(ValueError, match=r"train_batch_size 8 != .* x 2 process\(es\)"):
        load_deepspeed_config(path, cfg, world_size=2)


def test_a_rank_takes_the_gpu_of_its_local_rank(monkeypatch):
    from fedgate.devices import pick_device

    monkeypatch.setenv("LOCAL_RANK", "1")
    assert pick_device("cuda") == torch.device("cuda", 1)
    assert pick_device("cuda:0") == torch.device("cuda", 0)  # an explicit index wins
    assert pick_device("cpu") == torch.device("cpu")
