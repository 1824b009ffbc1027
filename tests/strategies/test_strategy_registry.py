"""The strategy registry: every rule is found by its name alone, lists itself, and refuses
the settings it cannot be combined with (one line naming the keys)."""

import pytest

from fedgate import strategies
from fedgate.config import FedgateConfig

ALL = {"fedavg", "fedavg-ab", "fedavgm", "fedprox", "fedadagrad", "fedadam", "fedyogi", "scaffold", "exact", "ffa",
       "median", "trimmed-mean", "krum", "validated", "hetlora", "fedsa", "rolora", "fedex-lora", "flora", "lora-fair"}


def test_every_module_registers_its_strategies_by_name():
    assert set(strategies.names()) == ALL
    for name in ALL:
        cls = strategies.get(name)
        assert cls.name == name and cls.summary, name
        assert isinstance(strategies.create(FedgateConfig.from_flat({"federation.strategy": name}).federation), cls)
    table = strategies.table().splitlines()
    assert len(table) == 2 + len(ALL) and all(any(f"`{n}`" in line for line in table) for n in ALL)


def test_an_unknown_strategy_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="federation.strategy must be one of .*'fedavg'.*got 'fedsgd'"):
        strategies.check(FedgateConfig.from_flat({"federation.strategy": "fedsgd"}))


@pytest.mark.parametrize("flat, match", [
    ({"federation.strategy": "median", "federation.weighting": "gates"}, "takes no per-layer weights"),
    ({"federation.strategy": "scaffold", "federation.heterogeneous-ranks": True}, "scaffold refuses federation.heterogeneous-ranks"),
    ({"federation.strategy": "scaffold", "engine.name": "deepspeed"}, "use engine.name=torch"),
    ({"engine.world-size": 2, "engine.name": "deepspeed", "federation.strategy": "scaffold"}, "engine.name=torch"),
    ({"federation.strategy": "exact", "federation.server-lr": 0.5}, "server-lr must be 1"),
    ({"federation.strategy": "ffa", "adapter.method": "bitfit"}, "federation.strategy=ffa needs adapter.method"),
])
def test_strategy_settings_that_cannot_work_are_refused(flat, match):
    cfg = FedgateConfig.from_flat(flat)  # every value is valid on its own
    with pytest.raises(ValueError, match=match):
        strategies.check(cfg)


def test_the_defaults_and_every_plain_choice_pass():
    for name in ALL:  # a rule that fills the adapters' dense term asks for it
        dense = strategies.get(name).dense_residual
        cfg = FedgateConfig.from_flat({"federation.strategy": name, "adapter.dense-residual": dense})
        assert strategies.check(cfg) is cfg


def test_the_table_names_every_rule_with_its_source_and_what_travels():
    lines = strategies.table().splitlines()
    assert len(lines) == 2 + len(ALL)
    for name in ALL:
        cls = strategies.get(name)
        assert cls.summary and cls.paper and cls.travels_up and cls.travels_down, name
        row = next(line for line in lines if line.startswith(f"| `{name}` |"))
        assert row.count(" | ") == 5 and "||" not in row.replace("\\|\\|", ""), row  # six cells, no stray pipes
        assert row.endswith("| no |") == bool(cls.refuses_ranks), row
