"""One client's local round without Flower: what it trains, what it replies."""

import numpy as np
import pytest
import torch

from fedgate.data import DataError
from fedgate.federated.client import ClientTask, client_config, clear_cache, round_seed
from fedgate.federated.shards import client_shard, flipped_partitions
from fedgate.inject import adapter_modules
from fedgate.state import adapter_state, to_numpy


def test_client_config_takes_node_overrides_but_not_flower_keys():
    cfg = client_config({"train.batch-size": 8}, {"partition-id": 1, "num-partitions": 2, "train.batch-size": 4})
    assert cfg.train.batch_size == 4


def test_round_seeds_differ_per_round_and_client_and_repeat():
    seeds = {round_seed(0, r, p) for r in (1, 2) for p in (0, 1)}
    assert len(seeds) == 4
    assert round_seed(0, 2, 1) == round_seed(0, 2, 1)


def test_shards_are_disjoint_and_keep_a_holdout(tiny_cfg):
    cfg = tiny_cfg()
    shards = [client_shard(cfg, p, 2) for p in range(2)]
    for s in shards:
        assert len(s["holdout"]) > 0 and not set(s["train"]["prompt"]) & set(s["holdout"]["prompt"])
    assert sum(len(s["train"]) + len(s["holdout"]) for s in shards) == 160
    with pytest.raises(DataError, match="partition-id 2 is outside 0..1"):
        client_shard(cfg, 2, 2)


def test_flipped_clients_get_all_training_labels_flipped_and_keep_true_holdout(tiny_cfg):
    clean = [client_shard(tiny_cfg(), p, 5) for p in range(5)]
    cfg = tiny_cfg(**{"shards.flipped-clients": 0.2})
    adversaries = flipped_partitions(0.2, 5, cfg.data.seed)
    assert len(adversaries) == 1 and adversaries == flipped_partitions(0.2, 5, cfg.data.seed)
    for p in range(5):
        shard = client_shard(cfg, p, 5)
        true, seen = np.array(clean[p]["train"]["helpfulness"]), np.array(shard["train"]["helpfulness"])
        if p in adversaries:
            np.testing.assert_array_equal(seen, 4 - true)
            assert all(shard["train"]["flipped"])
        else:
            np.testing.assert_array_equal(seen, true)
        assert shard["holdout"]["helpfulness"] == clean[p]["holdout"]["helpfulness"]


def test_absent_clients_are_the_flipped_clients_and_refuse_with_the_reason(tiny_cfg):
    cfg = tiny_cfg(**{"shards.absent-clients": 0.2})
    (absent,) = flipped_partitions(0.2, 5, cfg.data.seed)  # the very client a flipped run corrupts
    with pytest.raises(DataError, match=f"partition {absent} of 5 is absent"):
        client_shard(cfg, absent, 5)
    others = [client_shard(cfg, p, 5) for p in range(5) if p != absent]
    clean = [client_shard(tiny_cfg(), p, 5) for p in range(5) if p != absent]
    assert [o["train"]["prompt"] for o in others] == [c["train"]["prompt"] for c in clean]  # the rest unchanged


def test_flipped_rows_flip_that_share_of_every_client(tiny_cfg):
    cfg = tiny_cfg(**{"shards.flipped-rows": 0.25})
    for p in range(2):
        train = client_shard(cfg, p, 2)["train"]
        assert sum(train["flipped"]) == round(0.25 * len(train))
    task = ClientTask(cfg, 1, 2)
    assert task.shard.flipped_rows == round(0.25 * len(client_shard(cfg, 1, 2)["train"]))


def test_labeled_fraction_keeps_that_share_of_training_rows_and_the_whole_holdout(tiny_cfg):
    full = client_shard(tiny_cfg(), 0, 2)
    sparse = client_shard(tiny_cfg(**{"shards.labeled-fraction": 0.25}), 0, 2)
    assert len(sparse["train"]) == round(0.25 * len(full["train"]))
    assert set(sparse["train"]["response"]) <= set(full["train"]["response"])
    assert sparse["holdout"]["response"] == full["holdout"]["response"]


def test_train_replies_only_adapter_gate_head_deltas(tiny_cfg):
    clear_cache()
    cfg = tiny_cfg()
    task = ClientTask(cfg, 0, 2)
    glob = to_numpy(adapter_state(task.model))
    update = task.train(glob, server_round=2, prior={"nothing": 0.5})
    model_params = dict(task.model.named_parameters())
    trainable = {n for n, p in model_params.items() if p.requires_grad}
    assert set(update.delta) == trainable == set(glob)
    assert all(n.startswith("head.") or any(n.startswith(m + ".") for m in adapter_modules(task.model))
               for n in update.delta)
    sent = sum(v.nbytes for v in update.delta.values())
    backbone = sum(p.numel() * p.element_size() for p in model_params.values() if not p.requires_grad)
    assert sent < 0.05 * backbone  # tiny-bert: adapters are ~1% of the backbone
    # delta = local - global: the model now holds global + delta
    local = to_numpy(adapter_state(task.model))
    for k in glob:
        np.testing.assert_allclose(local[k], glob[k] + update.delta[k], rtol=0, atol=1e-6)
    assert any(np.abs(d).max() > 0 for d in update.delta.values())
    assert update.num_examples == len(task.shard.train)
    assert update.metrics["prior-adapters"] == 1.0 and update.metrics["prior-mean"] == 0.5
    assert set(update.gate_stats) == set(adapter_modules(task.model))


def test_tasks_share_the_cached_backbone_and_reset_from_the_global_state(tiny_cfg):
    clear_cache()
    cfg = tiny_cfg()
    a, b = ClientTask(cfg, 0, 2), ClientTask(cfg, 1, 2)
    assert a.model is b.model and a.shard is not b.shard
    glob = to_numpy(adapter_state(a.model))
    first = a.train(glob, server_round=2)
    again = ClientTask(cfg, 0, 2).train(glob, server_round=2)  # same round, same seed, same start
    for k in first.delta:
        np.testing.assert_allclose(first.delta[k], again.delta[k], atol=1e-6)


def test_head_statistics_are_the_ridge_statistics_of_the_training_rows(tiny_cfg):
    from fedgate.model import head_targets
    from fedgate.ridge import ridge_stats
    from fedgate.evaluation import frozen_features

    clear_cache()
    task = ClientTask(tiny_cfg(), 1, 2)
    glob = to_numpy(adapter_state(task.model))
    stats = task.head_statistics(glob)
    x = frozen_features(task.model, task.shard.train, task.cfg, task.pad_id, task.device)
    ref = ridge_stats(x, head_targets(task.shard.train.labels, task.cfg.data.misaligned_threshold).numpy())
    assert stats.count == len(task.shard.train) and stats.gram.shape == (x.shape[1] + 1,) * 2
    np.testing.assert_allclose(stats.gram, ref.gram, rtol=1e-6)
    np.testing.assert_allclose(stats.moment, ref.moment, rtol=1e-6)
    rows, metrics = task.evaluate(glob)
    assert rows == len(task.shard.holdout) and "auc" in metrics


def test_a_wrong_global_state_is_refused(tiny_cfg):
    clear_cache()
    task = ClientTask(tiny_cfg(), 0, 2)
    glob = to_numpy(adapter_state(task.model))
    name = next(k for k in glob if k.endswith("lora_A"))
    bad = {**glob, name: np.zeros((glob[name].shape[0] + 1, glob[name].shape[1]), dtype=np.float32)}
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        task.train(bad, server_round=1)
    nan = {**glob, name: np.full(glob[name].shape, np.nan, dtype=np.float32)}
    with pytest.raises(ValueError, match="NaN"):
        task.train(nan, server_round=1)
    assert torch.isfinite(dict(task.model.named_parameters())[name]).all()
