"""Shared test setup: offline, no telemetry, tiny models only.

The environment variables are set at import time (before any test imports Flower or
transformers) so that nothing in the suite tries to reach the internet.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray listens on loopback only
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("FLWR_HOME", tempfile.mkdtemp(prefix="fedgate-flwr-home-"))

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]

# A few real sentences of different lengths: tokenised with right padding they give
# batches where padding actually occurs.
SAMPLE_TEXTS = (
    "How do I reverse a list in Python?",
    "Use reversed() or slicing with a step of minus one; both leave the original list untouched.",
    "Hello.",
)


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """``<repo>/../shared/data`` (real sample files, never copied into the repo)."""
    path = REPO_ROOT.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"shared data folder {path} is absent")
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """The offline MiniLM tokenizer (loaded once per session)."""
    from fedgate.tiny import tiny_tokenizer as load

    return load()


@pytest.fixture(scope="session")
def text_batch(tiny_tokenizer):
    """A real tokenised, right-padded batch: {"input_ids", "attention_mask"} (batch 3)."""
    enc = tiny_tokenizer(list(SAMPLE_TEXTS), padding=True, truncation=True, max_length=32, return_tensors="pt")
    assert (enc["attention_mask"] == 0).any(), "the sample batch should contain padding"
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


TINY_FEDERATION = {
    "model.backbone": "tiny-bert",
    "data.limit": 160,
    "train.epochs": 1.0,
    "train.batch-size": 8,
    "server.eval-limit": 40,
}


@pytest.fixture
def tiny_cfg():
    """A tiny federation config; call with overrides: make(**{"server.eval-limit": 20})."""
    from fedgate.config import FedgateConfig

    def make(**over) -> FedgateConfig:
        return FedgateConfig.from_flat({**TINY_FEDERATION, **over})
    return make

