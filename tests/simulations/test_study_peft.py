"""A baseline PEFT method through a real Flower simulation: the PEFT study's IA3 variant
(peft's IA3 vectors, not LoRA factors) is trained by the clients, averaged by the server,
checkpointed and scored, and the study's accuracy-vs-parameters plot comes out."""

import csv

import pytest
import torch

from fedgate.rundir import RunDir
from fedgate.state import load_state
from simulations import study_peft

pytestmark = pytest.mark.integration

TINY = ["model.backbone=\"tiny-bert\"", "server.baselines=false", "data.limit=160", "server.eval-limit=40", "federation.rounds=1",
        "train.batch-size=8", "train.threads=1"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "peft"
    args = ["--out", str(out), "--variants", "ia3", "--num-supernodes", "2", "--timeout", "400"] + \
        [a for kv in TINY for a in ("--set", kv)]
    assert study_peft.main(args) == 0
    return out


def test_the_global_ia3_vectors_are_trained_averaged_and_checkpointed(study):
    run = RunDir(study / "ia3" / "seed-0")
    (final,) = [r for r in run.rounds() if r["round"] == 1]
    assert len(final["clients"]) == 2
    state, _ = load_state(study / "ia3" / "seed-0" / "checkpoints" / "round-001.safetensors")
    ia3 = {k: v for k, v in state.items() if ".ia3_l." in k}
    assert sorted(k.split(".ia3_l.")[0].removeprefix("backbone.encoder.") for k in ia3) == sorted(
        f"layer.{i}.{m}" for i in (0, 1) for m in ("attention.self.key", "attention.self.value",
                                                  "attention.output.dense", "output.dense"))
    assert not any("lora_" in k for k in state)
    assert any(not torch.equal(v, torch.ones_like(v)) for v in ia3.values())  # moved off peft's identity start


def test_the_table_and_the_accuracy_vs_parameters_plot(study):
    with (study / "results.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    assert row["variant"] == "ia3" and 0.0 < float(row["trainable_percent"]) < 5.0
    assert 0.0 <= float(row["auc"]) <= 1.0
    assert (study / "auc_vs_params.png").stat().st_size > 0
