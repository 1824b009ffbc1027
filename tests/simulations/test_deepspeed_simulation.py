"""A 3-round Flower simulation whose clients train with DeepSpeed ZeRO-3 (CPU, gloo)."""

import pytest

from fedgate.rundir import RunDir
from fedgate.launch.simulation import simulate

pytestmark = pytest.mark.integration

DS = ['model.backbone="tiny-bert" data.limit=120 server.eval-limit=30 federation.rounds=3 train.batch-size=8 '
      'engine.name="deepspeed" engine.zero-stage=3 server.noise-rates="" federation.fraction-evaluate=0.0 '
      'server.report=false server.baselines=false']


def test_three_rounds_with_zero3_clients(tmp_path):
    code, run_dir = simulate(DS, num_supernodes=2, out=tmp_path / "run", timeout=500)
    assert code == 0
    rounds = RunDir(run_dir).rounds()
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    for r in rounds[1:]:
        assert len(r["clients"]) == 2 and not r["failures"] and not r["rejected"]
        assert r["bytes"]["array_up"] > 0 and r["server_eval"]["auc"] is not None
    peaks = [max(c["rss-peak-mb"] for c in r["clients"]) for r in rounds[1:]]
    assert peaks[2] <= peaks[1] * 1.10, f"client peak RSS grew from round 2 to 3: {peaks}"
