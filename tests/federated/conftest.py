import pytest

from fedgate.config import FedgateConfig

TINY = {
    "model.backbone": "tiny-bert",
    "data.limit": 160,
    "train.epochs": 1.0,
    "train.batch-size": 8,
    "server.eval-limit": 40,
}


@pytest.fixture
def tiny_cfg():
    """A tiny federation config; call with overrides: make(**{"server.eval-limit": 20})."""
    def make(**over) -> FedgateConfig:
        return FedgateConfig.from_flat({**TINY, **over})
    return make
