"""One real Flower simulation per strategy family (tiny model, 2 supernodes, 2 rounds): the
run completes with every update accepted, and each family leaves its trace in rounds.jsonl."""

import pytest

from fedgate.rundir import RunDir
from fedgate.launch.simulation import simulate

pytestmark = pytest.mark.integration

BASE = ('model.backbone="tiny-bert" data.limit=100 server.eval-limit=20 federation.rounds=2 train.batch-size=8 '
        'server.noise-rates="" federation.fraction-evaluate=0.0 server.report=false server.baselines=false ')

FAMILIES = {
    # server optimizer, gate-weighted averaging and norm clipping together
    "adaptive": 'federation.strategy="fedadam" federation.weighting="gates" federation.clip-norm=5.0',
    # what clients keep between rounds in Flower's context.state
    "client-state": 'federation.strategy="scaffold" federation.personal-gates=true',
    "exact-ranks": 'federation.strategy="exact" federation.heterogeneous-ranks=true federation.client-ranks="4,8"',
    # norm-weighted, zero-padded, truncated per client; the rank-4 node's start loses part of the rank-8 update;
    # each client's rank self-pruning state survives between rounds in Flower's context.state
    "hetlora-ranks": ('federation.strategy="hetlora" federation.heterogeneous-ranks=true '
                      'federation.client-ranks="4,8" adapter.r=8 train.rank-prune-decay=0.5'),
    # only A travels; each client's B survives between rounds in Flower's context.state
    "fedsa": 'federation.strategy="fedsa"',
    # round 1 sends B alone back, round 2 A alone
    "rolora": 'federation.strategy="rolora"',
    # the dense residual: sent every round (full-rank downlink), never sent back
    "fedex-lora": 'federation.strategy="fedex-lora" adapter.dense-residual=true',
    "flora-ranks": ('federation.strategy="flora" adapter.dense-residual=true federation.heterogeneous-ranks=true '
                    'federation.client-ranks="4,8" adapter.r=8'),
    "lora-fair": 'federation.strategy="lora-fair"',
    "ffa-pruning": 'federation.strategy="ffa" federation.prune-threshold=0.95 federation.prune-patience=1',
    "robust": 'federation.strategy="trimmed-mean" federation.trim-fraction=0.0 federation.max-update-norm=500.0',
    # client-level DP: clipped, unweighted, noised on the server, epsilon accounted each round;
    # FedProx's clients add the proximal term, and its server sums updates as FedAvg's does
    "fedprox-dp-central": ('federation.strategy="fedprox" train.proximal-mu=0.1 federation.dp="central" '
                           'federation.dp-noise=1.0 federation.clip-norm=0.5 federation.weighting="uniform" '
                           'federation.gate-prior="fixed" train.head-init="zero"'),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_strategy_family_runs_in_a_real_simulation(family, tmp_path):
    code, run_dir = simulate([BASE + FAMILIES[family]], num_supernodes=2, out=tmp_path / "run", timeout=400)
    assert code == 0, f"simulation failed; see {run_dir}"
    rounds = RunDir(run_dir).rounds()
    assert [r["round"] for r in rounds] == [0, 1, 2]
    for r in rounds[1:]:
        assert len(r["clients"]) == 2 and not r["failures"] and not r["rejected"], r
        assert r["server_eval"]["auc"] is not None
    first, second = rounds[1], rounds[2]
    if family == "adaptive":
        assert all(0 < s <= 1 for s in first["strategy"]["clip_scale"])
    if family == "client-state":  # the clients' own state survived from round 1 to round 2
        assert [c["rounds-trained"] for c in first["clients"]] == [1, 1]
        assert [c["rounds-trained"] for c in second["clients"]] == [2, 2]
        assert all(c["scaffold-ci-norm"] == 0 for c in first["clients"])  # SCAFFOLD's c_i came back
        assert all(c["scaffold-ci-norm"] > 0 for c in second["clients"])
        # the control variates travel beside the deltas and count as tensors both ways
        full = 4 * rounds[0]["params"]["trainable"]  # float32 bytes of every trainable tensor
        assert all(r["bytes"]["array_up_per_client"] > 1.9 * full for r in (first, second))
        assert all(r["bytes"]["array_down"] > 2 * 1.9 * full for r in (first, second))
    if family == "exact-ranks":
        assert sorted(c["partition-id"] for c in first["clients"]) == [0, 1]
        errors = first["strategy"]["truncation_error"]
        assert errors and all(0 <= e < 1 for e in errors.values())
    assert first["strategy"]["aggregate_ms"] > 0
    if family == "hetlora-ranks":
        assert sum(second["strategy"]["norm_weight_share"]) == pytest.approx(1.0, abs=1e-3)
        lost = list(second["strategy"]["start_truncation_error"].values())  # the rank-4 node, round 2
        assert len(lost) == 1 and 0 < lost[0] < 1
        built = {0.0: 4.0, 1.0: 8.0}  # federation.client-ranks by partition
        for c in first["clients"]:  # nothing to compare with yet: no prune, nothing came back
            assert c["hetlora-live-rank"] == built[c["partition-id"]] and c["hetlora-state-kept"] == 0.0
        for c in second["clients"]:  # the live rank came back; a prune halves it (the kept tail decides)
            assert c["hetlora-state-kept"] == 1.0
            assert c["hetlora-live-rank"] + c["hetlora-pruned-components"] == built[c["partition-id"]]
            assert c["hetlora-pruned-components"] in (0.0, c["hetlora-live-rank"])
    if family == "fedsa":
        assert [c["fedsa-rounds-kept"] for c in first["clients"]] == [0.0, 0.0]
        assert [c["fedsa-rounds-kept"] for c in second["clients"]] == [1.0, 1.0]
    if family == "rolora":  # both factors go down; the frozen one does not come back
        full = 4 * rounds[0]["params"]["trainable"]  # float32 bytes of every trainable tensor
        assert all(r["bytes"]["array_up_per_client"] < 0.8 * full for r in (first, second))
        assert all(r["bytes"]["array_down"] == 2 * full for r in (first, second))
    if family in ("fedex-lora", "flora-ranks"):
        assert all(r["bytes"]["array_down"] > 2 * r["bytes"]["array_up"] for r in (first, second))
    if family == "fedex-lora":
        assert 0 < second["strategy"]["residual_share"]
    if family == "flora-ranks":
        assert second["strategy"]["stacked_bytes"] < second["bytes"]["array_down"]
        # the merged dense term is in the checkpoint, and a trained model loads it back
        from fedgate.inject import adapter_modules
        from fedgate.trained import load_trained
        modules = adapter_modules(load_trained(run_dir).model).values()
        assert all(m.lora_residual is not None for m in modules)
        assert any(float(m.lora_residual.abs().max()) > 0 for m in modules)
    if family == "lora-fair":
        assert 0 <= second["strategy"]["fair_residual"] < 1
    if family == "ffa-pruning":  # every structural gate starts at 0.88 < 0.95: all pruned after round 1
        assert first["strategy"]["newly_pruned"] and second["strategy"]["pruned"]
        assert second["bytes"]["array_up"] < 0.5 * first["bytes"]["array_up"]
    if family == "fedprox-dp-central":
        eps = [r["privacy"]["epsilon"] for r in (first, second)]
        assert 0 < eps[0] < eps[1] and first["privacy"]["mode"] == "central"
        assert first["strategy"]["dp_noise_std"] == pytest.approx(1.0 * 0.5 / 2)  # sigma * C / n
        assert not first["gates"] and not second["gates"]  # clients sent no gate statistics
        assert "epsilon" in (run_dir / "simulation.log").read_text()
