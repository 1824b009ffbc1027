"""The real thing at tiny scale: Flower's simulation runtime runs fedgate's ServerApp and
ClientApp (3 supernodes, tiny model, 2 rounds), then resumes the run for a third round,
which must end exactly where an uninterrupted 3-round run ends. The strategy is FedYogi, whose
server optimizer keeps two moment arrays per tensor: losing them on resume would change
round 3. The launcher starts its own SuperLink on a free loopback port and must stop it."""

import json
from pathlib import Path

import numpy as np
import pytest

from fedgate.aggregation.gates import PRIOR_EPS
from fedgate.rundir import RunDir, load_checkpoint
from fedgate.launch.processes import processes_with_flwr_home
from fedgate.launch.simulation import STATES_DIR, resolve_config, simulate

REPO = Path(__file__).resolve().parents[2]
TINY = ['model.backbone="tiny-bert" data.limit=180 server.eval-limit=40 federation.rounds=2 train.batch-size=8 '
        'server.tensorboard=true federation.strategy="fedyogi"']


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "run"
    code, path = simulate(TINY, num_supernodes=3, out=out, timeout=420)
    assert code == 0, f"simulation failed; see {path}"
    assert processes_with_flwr_home(path / "flwr-home") == [], "the launcher left Flower processes running"
    return path


@pytest.mark.integration
def test_rounds_hold_every_metric(run_dir):
    rounds = RunDir(run_dir).rounds()
    assert [r["round"] for r in rounds] == [0, 1, 2]
    for r in rounds[1:]:
        assert len(r["clients"]) == 3 and r["failures"] == [] and r["rejected"] == []
        assert sorted(c["partition-id"] for c in r["clients"]) == [0, 1, 2]
        s = r["server_eval"]
        for key in ("auc", "f1", "pearson_helpfulness", "pearson_verbosity"):
            assert key in s
        assert 0.0 <= s["auc"] <= 1.0
        fe = r["federated_eval"]
        assert fe["nodes"] >= 1 and fe["auc-worst"] <= fe["auc-mean"]
        assert r["bytes"]["down"] > r["bytes"]["array_down"] > 0 and r["bytes"]["up"] > r["bytes"]["array_up"] > 0
        assert set(r["wall_s"]) == {"train", "federated_eval", "server_eval", "round"}
        assert r["gates"]
    # server.noise-every=0: the noisy AUCs before training and after the last round only
    noisy = [sorted(k for k in r["server_eval"] if k.startswith("auc_noise_")) for r in rounds]
    assert noisy == [["auc_noise_0.1", "auc_noise_0.2"], [], ["auc_noise_0.1", "auc_noise_0.2"]]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    assert summary["final"]["auc"] == rounds[-1]["server_eval"]["auc"]
    # every evaluated round has its validation score; the summary names the best one with its test figures
    scores = [r["server_eval"]["validation_auc"] for r in rounds]
    best = summary["best_by_validation"]
    assert scores[best["round"]] == max(scores) and best["auc"] == rounds[best["round"]]["server_eval"]["auc"]
    report = (run_dir / "report.md").read_text()
    assert "| 2 |" in report and all((run_dir / "plots" / p).is_file() for p in ("metrics.png", "roc.png", "gates.png"))
    config = json.loads((run_dir / "config.json").read_text())
    assert config["config"]["model.backbone"] == "tiny-bert" and config["versions"]["flwr"]
    # the workers shared the lower layers' states through the run directory, which the
    # launcher removed when the run ended
    assert config["config"]["train.cache-dir"] == str(run_dir.resolve() / STATES_DIR)
    assert not (run_dir / STATES_DIR).exists()


@pytest.mark.integration
def test_round_zero_fits_the_head_from_every_clients_statistics(run_dir):
    head = RunDir(run_dir).rounds()[0]["head_init"]
    assert head["fitted"] and head["clients"] == 3 and head["failures"] == []
    assert head["rows"] > 0 and head["bytes_up"] > head["bytes_down"] > 0  # a gram matrix per client
    assert head["ridge_lambda"] > 0 and 0.0 <= head["validation_auc"] <= 1.0


@pytest.mark.integration
def test_messages_carry_adapters_gates_and_head_only(run_dir):
    rounds = RunDir(run_dir).rounds()
    params = rounds[0]["params"]
    _, _, state, _ = load_checkpoint(run_dir)
    assert all(k.startswith("head.") or k.rsplit(".", 1)[-1] in
               {"lora_A", "lora_B", "gate_weight", "gate_bias", "struct_logit"} for k in state)
    payload = sum(v.nbytes for v in state.values())
    assert sum(v.size for v in state.values()) == params["trainable"]
    for r in rounds[1:]:
        assert r["bytes"]["array_up_per_client"] == payload  # one delta per trainable tensor, nothing else
        assert r["bytes"]["array_up_per_client"] < 0.02 * params["backbone_bytes"]


@pytest.mark.integration
def test_the_gate_prior_reaches_the_clients_in_round_two(run_dir):
    rounds = RunDir(run_dir).rounds()
    assert all(c["prior-adapters"] == 0 for c in rounds[1]["clients"])  # round 1: fixed loss.gate-prior
    profile = rounds[1]["gates"]
    expected = np.mean([min(max(g["token_gate"], PRIOR_EPS), 1 - PRIOR_EPS) for g in profile.values()])
    for c in rounds[2]["clients"]:
        assert c["prior-adapters"] == len(profile)
        assert c["prior-mean"] == pytest.approx(expected, abs=1e-6)


@pytest.mark.integration
def test_fedgate_evaluate_scores_the_latest_checkpoint(run_dir):
    from fedgate.centralized import evaluate_saved

    metrics = evaluate_saved(run_dir, split="validation", progress=False)
    assert metrics["adapters"].endswith("checkpoints/round-002.safetensors")
    assert "f1" in metrics  # at the server's cut, stored in the checkpoint header
    assert 0.0 <= metrics["auc"] <= 1.0


@pytest.mark.integration
def test_tensorboard_holds_every_rounds_metrics_and_the_final_roc(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0}).Reload()
    rounds = RunDir(run_dir).rounds()
    auc = events.Scalars("server/auc")
    assert [e.step for e in auc] == [r["round"] for r in rounds]
    assert [e.value for e in auc] == pytest.approx([r["server_eval"]["auc"] for r in rounds], abs=1e-6)
    assert [e.value for e in events.Scalars("clients/train_loss")] == pytest.approx(
        [r["train"]["train-loss"] for r in rounds if r["round"] > 0], abs=1e-6)
    assert any(t.startswith("gates/structural_gate/") for t in events.Tags()["scalars"])
    assert "gates/structural_gate_over_layers" in events.Tags()["histograms"]
    assert "server/final_roc" in events.Tags()["images"]


@pytest.mark.integration
def test_fedgate_score_reads_a_chosen_rounds_checkpoint(run_dir, tmp_path):
    import json

    from fedgate.cli import main

    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "How do I sort?", "response": "Use sorted()."}) + "\n")
    scores = {}
    for rnd in (1, 2):
        out = tmp_path / f"r{rnd}.jsonl"
        assert main(["score", str(run_dir), "--round", str(rnd), "--data", str(rows), "--out", str(out), "--quiet"]) == 0
        scores[rnd] = json.loads(out.read_text())["alignment_score"]
    assert scores[1] != scores[2]  # two rounds, two models
    assert main(["score", str(run_dir), "--round", "7", "--data", str(rows), "--quiet"]) == 2


@pytest.fixture(scope="module")
def resumed(run_dir):
    """The 2-round run resumed for a third round: (its run directory, its rounds before)."""
    before = RunDir(run_dir).rounds()
    assert RunDir(run_dir).server_arrays(2), "the fedyogi state was not checkpointed"
    code, path = simulate([*TINY, f'federation.rounds=3 server.resume-from="{run_dir}"'], num_supernodes=3,
                          timeout=420)
    assert code == 0 and path == run_dir
    return run_dir, before


@pytest.mark.integration
def test_resume_continues_from_the_next_round(resumed):
    run_dir, before = resumed
    rounds = RunDir(run_dir).rounds()
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]  # nothing repeated, nothing lost
    assert rounds[:3] == before
    assert json.loads((run_dir / "config.json").read_text())["start_round"] == 3
    assert sorted(RunDir(run_dir).checkpoints()) == [0, 1, 2, 3]  # round 0: the start, which may be the best on validation
    assert all(c["prior-adapters"] > 0 for c in rounds[3]["clients"])  # the profile came from the checkpoint


@pytest.mark.integration
def test_the_resumed_run_ends_where_an_uninterrupted_run_ends(resumed, tmp_path):
    run_dir, _ = resumed
    code, whole = simulate([*TINY, "federation.rounds=3"], num_supernodes=3, out=tmp_path / "whole", timeout=420)
    assert code == 0
    _, done_a, state_a, _ = load_checkpoint(whole)
    _, done_b, state_b, _ = load_checkpoint(run_dir)
    assert done_a == done_b == 3 and set(state_a) == set(state_b)
    for k in state_a:
        np.testing.assert_allclose(state_b[k], state_a[k], rtol=0, atol=1e-6, err_msg=k)
    moved = max(float(np.abs(state_a[k] - v).max()) for k, v in load_checkpoint(whole / "checkpoints" /
                                                                                "round-002.safetensors")[2].items())
    assert moved > 1e-4  # round 3 changed the adapters, so the equality above says something


@pytest.mark.integration
def test_a_failing_server_app_makes_the_launcher_fail(tmp_path):
    code, path = simulate(['model.backbone="tiny-bert" data.source="/nonexistent/data.jsonl"'], num_supernodes=2,
                          out=tmp_path / "bad", timeout=300)
    assert code == 1
    summary = json.loads((path / "summary.json").read_text())
    assert summary["status"] == "failed" and "/nonexistent/data.jsonl" in summary["error"]
    assert processes_with_flwr_home(path / "flwr-home") == []


def test_run_config_is_checked_before_anything_starts():
    with pytest.raises(KeyError, match="train.epochz"):
        resolve_config(REPO, ["train.epochz=2"])
    with pytest.raises(ValueError, match="shards.partitioner"):
        resolve_config(REPO, ['shards.partitioner="random"'])


@pytest.mark.integration
def test_run_outputs_are_safetensors_json_and_text(run_dir):
    """Nothing a run writes needs unpickling to read back (the Flower state under
    flwr-home belongs to Flower)."""
    files = [p for p in run_dir.rglob("*") if p.is_file()
             and not {"flwr-home", "tensorboard"} & set(p.relative_to(run_dir).parts)]  # Flower's and TensorBoard's own
    assert any(p.suffix == ".safetensors" for p in files)
    assert {p.suffix for p in files} <= {".safetensors", ".json", ".jsonl", ".csv", ".md", ".png", ".log"}, files
