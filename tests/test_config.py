"""The typed config built from Flower's flat dashed keys."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fedgate.adapters import AdapterSpec
from fedgate.config import DataConfig, FedgateConfig, ModelConfig, TrainConfig
from fedgate.config.renamed import RENAMED, migrate, migrate_config_string
from fedgate.losses import LossWeights


def test_defaults_build():
    cfg = FedgateConfig()
    assert cfg.model == ModelConfig() and cfg.adapter == AdapterSpec() and cfg.loss == LossWeights()
    assert cfg.train == TrainConfig() and cfg.data == DataConfig()
    assert FedgateConfig.from_flat({}) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.pairing = "joint"  # type: ignore[misc]


def test_from_flat_coercion():
    cfg = FedgateConfig.from_flat({
        "adapter.r": "16",
        "adapter.alpha": 32,
        "adapter.token-gate": "false",
        "model.layers": "3-5",
        "model.targets": "query, value",
        "model.pairing": "joint",
        "train.bf16": "false",
        "train.lr-adapter": "5e-4",
        "train.batch-size": 8.0,
        "train.cache-lower-layers": False,
        "loss.lambda-s": "0.01",
        "data.misaligned-threshold": "1",
    })
    assert cfg.adapter.r == 16 and isinstance(cfg.adapter.r, int)
    assert cfg.adapter.alpha == 32.0 and isinstance(cfg.adapter.alpha, float)
    assert cfg.adapter.token_gate is False
    assert cfg.model.layers == (3, 4, 5)
    assert cfg.model.targets == ("query", "value")
    assert cfg.model.pairing == "joint"
    assert cfg.train.bf16 is False
    assert cfg.train.lr_adapter == pytest.approx(5e-4)
    assert cfg.train.batch_size == 8 and isinstance(cfg.train.batch_size, int)
    assert cfg.train.cache_lower_layers is False
    assert cfg.loss.lambda_s == pytest.approx(0.01)
    assert cfg.data.misaligned_threshold == 1
    # untouched fields keep their defaults
    assert cfg.train.epochs == TrainConfig().epochs and cfg.model.backbone == ModelConfig().backbone


@pytest.mark.parametrize("raw,expected", [
    ("3-5", (3, 4, 5)),
    ("0,2", (0, 2)),
    ("0, 2-3, 7", (0, 2, 3, 7)),
    ("", ()),
    (4, (4,)),
])
def test_layer_lists(raw, expected):
    assert FedgateConfig.from_flat({"model.layers": raw}).model.layers == expected


@pytest.mark.parametrize("raw,expected", [("true", True), ("True", True), ("1", True), ("yes", True),
                                          ("false", False), ("0", False), ("no", False), (True, True)])
def test_bool_strings(raw, expected):
    assert FedgateConfig.from_flat({"train.bf16": raw}).train.bf16 is expected


def test_unknown_key_names_key_and_lists_valid_keys():
    with pytest.raises(KeyError) as err:
        FedgateConfig.from_flat({"adapter.rank": 4})
    msg = str(err.value)
    assert "adapter.rank" in msg
    for valid in ("r", "alpha", "dropout", "token-gate", "structural-gate"):
        assert repr(valid) in msg
    # underscores are not the flat spelling
    with pytest.raises(KeyError, match="train.lr_adapter"):
        FedgateConfig.from_flat({"train.lr_adapter": 0.1})


@pytest.mark.parametrize("key,raw", [
    ("adapter.r", "abc"),
    ("adapter.r", 0),
    ("adapter.r", 2.5),
    ("adapter.dropout", 1.5),
    ("adapter.alpha", True),
    ("model.pairing", "x"),
    ("model.pooling", "max"),
    ("model.layers", "a-b"),
    ("train.bf16", "maybe"),
    ("train.batch-size", 0),
    ("train.head-init", "random"),
    ("data.misaligned-threshold", 4),
])
def test_bad_value_names_the_key(key, raw):
    with pytest.raises(ValueError) as err:
        FedgateConfig.from_flat({key: raw})
    assert key in str(err.value)


def test_round_trip_defaults_and_custom():
    for cfg in (
        FedgateConfig(),
        FedgateConfig.from_flat({"adapter.r": 4, "model.layers": "0,1", "model.targets": "q_proj,v_proj",
                                 "train.bf16": False, "loss.beta": 0.5, "data.source": "nvidia/HelpSteer2",
                                 "adapter.dropout": 0.1, "train.max-steps": 10}),
    ):
        flat = cfg.to_flat()
        assert all(isinstance(v, (bool, int, float, str)) for v in flat.values())  # Flower scalars
        assert all("_" not in k for k in flat)  # dashed spelling
        assert FedgateConfig.from_flat(flat) == cfg
    flat = FedgateConfig.from_flat({"model.layers": "3-5", "model.targets": "query,value"}).to_flat()
    assert flat["model.layers"] == "3,4,5" and flat["model.targets"] == "query,value"
    assert flat["adapter.r"] == AdapterSpec().r


def test_to_flat_covers_every_field():
    flat = FedgateConfig().to_flat()
    n_fields = sum(len(dataclasses.fields(getattr(FedgateConfig(), f.name))) for f in dataclasses.fields(FedgateConfig))
    assert len(flat) == n_fields
    assert {k.split(".")[0] for k in flat} == {"model", "adapter", "loss", "train", "engine", "data", "federation",
                                               "shards", "server"}


def test_pyproject_app_config_holds_every_key():
    """`flwr run .` takes its defaults from [tool.flwr.app.config]: every fedgate key must be there."""
    import tomllib

    from flwr.common.config import flatten_dict

    root = Path(__file__).resolve().parents[1]
    app = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    flat = flatten_dict(app["config"])
    assert set(flat) == set(FedgateConfig().to_flat()) | {"preset"}
    cfg = FedgateConfig.from_flat(flat, ignore_unknown_sections=False)
    assert cfg.federation.rounds >= 1 and cfg.train.epochs == 0.75  # the federation sizing (docs/learning.md)
    # one source of defaults: every value there is the dataclasses' default with the named preset
    assert cfg == FedgateConfig.from_flat({"preset": flat["preset"]})
    assert app["components"] == {"serverapp": "server.app:app", "clientapp": "clients.app:app"}


def test_float_lists_and_federation_checks():
    cfg = FedgateConfig.from_flat({"server.noise-rates": "0.05, 0.2", "shards.alpha": 0.1})
    assert cfg.server.noise_rates == (0.05, 0.2) and cfg.shards.alpha == 0.1
    assert FedgateConfig.from_flat({"server.noise-rates": ""}).server.noise_rates == ()
    with pytest.raises(ValueError, match="server.noise-rates must be in"):
        FedgateConfig.from_flat({"server.noise-rates": "0.1,1.5"})
    with pytest.raises(ValueError, match="shards.local-holdout"):
        FedgateConfig.from_flat({"shards.local-holdout": 1.0})


def test_unknown_sections_ignored_by_default():
    flower_keys = {"num-server-rounds": 3, "strategy.fraction-train": 0.5, "superlink.name": "local",
                   "adapter.r": 2}
    cfg = FedgateConfig.from_flat(flower_keys)
    assert cfg.adapter.r == 2
    with pytest.raises(KeyError, match="strategy.fraction-train"):
        FedgateConfig.from_flat({"adapter.r": 2, "strategy.fraction-train": 0.5}, ignore_unknown_sections=False)
    with pytest.raises(KeyError, match="num-server-rounds"):
        FedgateConfig.from_flat(flower_keys, ignore_unknown_sections=False)


def test_large_integer_seed_is_exact():
    cfg = FedgateConfig.from_flat({"train.seed": "9007199254740993"})  # 2**53 + 1
    assert cfg.train.seed == 9007199254740993
    assert FedgateConfig.from_flat({"train.seed": 3.0}).train.seed == 3


def test_toml_arrays_and_value_checks():
    cfg = FedgateConfig.from_flat({"model.targets": ["query", "value"], "model.layers": [4, 5]})
    assert cfg.model.targets == ("query", "value") and cfg.model.layers == (4, 5)
    with pytest.raises(ValueError, match="loss.gate-prior"):
        FedgateConfig.from_flat({"loss.gate-prior": 1.5})
    with pytest.raises(ValueError, match="loss.beta"):
        FedgateConfig.from_flat({"loss.beta": -1})
    with pytest.raises(ValueError, match="data.limit"):
        FedgateConfig.from_flat({"data.limit": -3})


@pytest.mark.parametrize("flat, match", [
    ({"federation.prune-threshold": 0.5, "adapter.structural-gate": False}, "needs structural gates"),
    ({"federation.client-ranks": "4,8"}, "needs federation.heterogeneous-ranks"),
    ({"federation.trim-fraction": 0.5}, "trim-fraction must be in"),
])
def test_federation_settings_that_cannot_work_are_refused(flat, match):
    with pytest.raises(ValueError, match=match):
        FedgateConfig.from_flat(flat)


@pytest.mark.parametrize("flat, match", [
    ({"engine.world-size": 0}, "engine.world-size must be >= 1, got 0"),
    ({"engine.world-size": 2}, "needs engine.name=deepspeed"),
    ({"engine.world-size": 2, "engine.name": "deepspeed", "train.batch-size": 7}, "batch-size=7 must be divisible"),
    ({"engine.world-size": 2, "engine.name": "deepspeed", "engine.timeout-s": 4000}, "below federation.round-timeout"),
    ({"engine.timeout-s": 0}, "engine.timeout-s must be > 0"),
])
def test_multi_process_client_settings_that_cannot_work_are_refused(flat, match):
    with pytest.raises(ValueError, match=match):
        FedgateConfig.from_flat(flat)


def test_a_multi_process_client_config_builds():
    cfg = FedgateConfig.from_flat({"engine.world-size": "2", "engine.name": "deepspeed", "train.batch-size": 8,
                                   "engine.timeout-s": 60})
    assert (cfg.engine.world_size, cfg.engine.timeout_s) == (2, 60.0)
    assert FedgateConfig().engine.world_size == 1  # one process unless asked


def test_a_preset_fills_the_keys_a_run_does_not_give():
    from fedgate.config import PRESETS

    sizing = PRESETS["federation-cpu"]
    cfg = FedgateConfig.from_flat({"preset": "federation-cpu", "train.epochs": 2.0})
    assert cfg.train.epochs == 2.0  # the run's own key wins
    assert cfg.data.limit == sizing["data.limit"] and cfg.train.schedule == sizing["train.schedule"]
    assert FedgateConfig.from_flat({"preset": ""}) == FedgateConfig()
    with pytest.raises(ValueError, match="preset must be one of .*'federation-cpu'.*got 'gpu'"):
        FedgateConfig.from_flat({"preset": "gpu"}, ignore_unknown_sections=False)


@pytest.mark.parametrize("old, new", sorted(RENAMED.items()))
def test_a_moved_key_under_its_old_name_names_the_new_one(old, new):
    with pytest.raises(KeyError, match=f"'{old}' is now '{new}'"):
        FedgateConfig.from_flat({old: FedgateConfig().to_flat()[new]})


def test_a_saved_config_with_old_key_names_still_loads():
    saved = {"federation.partitioner": "iid", "federation.alpha": 0.3, "federation.rounds": 2}
    cfg = FedgateConfig.from_flat(migrate(saved))
    assert (cfg.shards.partitioner, cfg.shards.alpha, cfg.federation.rounds) == ("iid", 0.3, 2)
    assert migrate_config_string('federation.partitioner="iid" federation.alpha=0.3 federation.rounds=2') == (
        'shards.partitioner="iid" shards.alpha=0.3 federation.rounds=2')


def test_every_shards_value_is_checked_in_its_section():
    with pytest.raises(ValueError, match=r"shards.alpha must be > 0"):
        FedgateConfig.from_flat({"shards.alpha": 0.0})
    with pytest.raises(ValueError, match=r"shards.partitioner must be one of"):
        FedgateConfig.from_flat({"shards.partitioner": "zipf"})
