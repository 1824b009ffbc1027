"""``federation.head-refit=every-round`` in a real simulation (tiny model, 3 supernodes, 2
rounds): after each round's aggregation the server asks every client for its ridge
statistics under the new global adapters and replaces the averaged head with the pooled
fit. Recomputed here from each client's own shard under the final adapters, the fit is the
head the run saved; the statistics' bytes count as the round's uplink."""

import json

import numpy as np
import pytest

from fedgate import ridge
from fedgate.config import FedgateConfig
from fedgate.federated.client import ClientTask
from fedgate.federated.evaluator import ServerEvaluator
from fedgate.rundir import RunDir, load_checkpoint
from fedgate.launch.processes import processes_with_flwr_home
from fedgate.launch.simulation import simulate

CLIENTS = 3
TINY = ['model.backbone="tiny-bert" data.limit=180 server.eval-limit=40 federation.rounds=2 train.batch-size=8 '
        'server.noise-rates="" server.report=false federation.fraction-evaluate=0.0 '
        'federation.head-refit="every-round"']


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("refit") / "run"
    code, path = simulate(TINY, num_supernodes=CLIENTS, out=out, timeout=420)
    assert code == 0, f"simulation failed; see {path}"
    assert processes_with_flwr_home(path / "flwr-home") == []
    return path


@pytest.mark.integration
def test_every_round_refits_the_head_from_every_client_and_counts_its_bytes(run_dir):
    rounds = RunDir(run_dir).rounds()
    assert "head_init" in rounds[0] and "head_refit" not in rounds[0]
    for r in rounds[1:]:
        refit = r["head_refit"]
        assert refit["fitted"] and refit["clients"] == CLIENTS and refit["failures"] == []
        assert refit["bytes_up"] > 0 and r["bytes"]["array_up"] > refit["bytes_up"]  # adapters plus statistics
        assert r["bytes"]["up"] >= r["bytes"]["array_up"]


@pytest.mark.integration
def test_the_saved_head_is_the_pooled_ridge_fit_under_the_final_adapters(run_dir):
    flat = json.loads((run_dir / "config.json").read_text())["config"]
    flat["train.cache-dir"] = ""  # the run's shared cache was removed with it
    cfg = FedgateConfig.from_flat(flat)
    _, _, state, _ = load_checkpoint(run_dir)
    stats = [ClientTask(cfg, pid, CLIENTS).head_statistics(state) for pid in range(CLIENTS)]
    x_val, y_val = ServerEvaluator(cfg, progress=False).validation_features(state)
    w, lam, _ = ridge.fit(ridge.sum_stats(stats), x_val, y_val, cfg.data.misaligned_threshold)
    assert lam == pytest.approx(RunDir(run_dir).rounds()[-1]["head_refit"]["ridge_lambda"])
    np.testing.assert_allclose(state["head.weight"], w[:-1].T, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(state["head.bias"], w[-1], rtol=1e-3, atol=1e-4)


def test_the_refit_needs_the_round_zero_ridge_head():
    with pytest.raises(ValueError, match="federation.head-refit=final .*train.head-init=ridge"):
        FedgateConfig.from_flat({"federation.head-refit": "final", "train.head-init": "zero"})
    with pytest.raises(ValueError, match="federation.head-refit must be one of"):
        FedgateConfig.from_flat({"federation.head-refit": "sometimes"})
