"""One client trained by two processes (engine.world-size=2, gloo on CPU): the same local
round as one process, and no process left behind when a rank fails, hangs or loses its
launcher."""

import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from fedgate.federated.client import ClientTask, clear_cache
from fedgate.federated.ranks import RankFailed, processes_with_token, run_ranks, run_selftest
from fedgate.model import build_reward_model
from fedgate.state import adapter_state, to_numpy

# tiny-llama has no dropout, whose per-rank random streams could not match one process's.
# Partition 0 of 2 at data.limit=48 holds 27 training rows. A gate-KL weight 100x the default:
# the term is a function of the whole batch's mean gate, not of each rank's. No clipping:
# clipping and Adam would hide a wrongly scaled gradient.
RUN = {"model.backbone": "tiny-llama", "data.limit": 48, "train.epochs": 2.0, "train.max-grad-norm": 1e6,
       "train.device": "cpu", "loss.beta": 0.1, "engine.name": "deepspeed", "engine.timeout-s": 300}
NODE = {"partition-id": 0, "num-partitions": 2}


@pytest.fixture
def job_root(tmp_path, monkeypatch):
    """Job directories go here, so a test can see that none is left."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def _leftovers(job_root):
    return processes_with_token(), sorted(p.name for p in job_root.glob("fedgate-ranks-*"))


def _global_state(run):
    from fedgate.federated.client import client_config

    cfg = client_config(run, NODE)
    model, _ = build_reward_model(cfg.model, cfg.adapter)
    return to_numpy(adapter_state(model))


@pytest.mark.integration  # starts rank processes
@pytest.mark.parametrize("stage, batch", [
    (2, 10),  # batches of 10, 10, 7: the 7 rows split 4 / 3, so the ranks' losses weigh 8/7 and 6/7
    (3, 26),  # batches of 26 and 1: for the 1 row, rank 1 forwards a placeholder row at weight 0
])
def test_two_ranks_train_the_same_round_as_one_process(stage, batch, job_root):
    run = {**RUN, "engine.zero-stage": stage, "train.batch-size": batch}
    state = _global_state(run)
    clear_cache()
    from fedgate.federated.client import client_config

    one = ClientTask(client_config(run, NODE), 0, 2).train(state, 3)
    clear_cache()
    two = run_ranks({**run, "engine.world-size": 2}, NODE, 0, 2, state, 3)
    assert two.metrics["world-size"] == 2 and two.metrics["steps"] == one.metrics["steps"] == 2 * -(-27 // batch)
    assert two.num_examples == one.num_examples == 27
    # the rows were shared: rank 0 trained 14 rows per epoch (5 + 5 + 4, or 13 + 1), not all 27
    assert one.metrics["rank-rows-trained"] == 54 and two.metrics["rank-rows-trained"] == 28
    moved = max(float(np.abs(v).max()) for v in one.delta.values())
    assert moved > 1e-3, "the round did not train: nothing to compare"
    assert set(two.delta) == set(one.delta)
    for k, v in one.delta.items():
        np.testing.assert_allclose(two.delta[k], v, atol=1e-5, rtol=1e-4, err_msg=k)
    assert two.metrics["train-loss"] == pytest.approx(one.metrics["train-loss"], abs=1e-5)
    assert set(two.gate_stats) == set(one.gate_stats) and one.gate_stats
    for layer, stats in one.gate_stats.items():
        for name, value in stats.items():
            assert two.gate_stats[layer][name] == pytest.approx(value, abs=1e-6), (layer, name)
    assert _leftovers(job_root) == ([], [])


@pytest.mark.integration  # starts rank processes
def test_a_failing_rank_is_named_and_nothing_is_left(job_root, monkeypatch):
    monkeypatch.setenv("FEDGATE_RANKS_FAULT", "raise:1")
    started = []
    t0 = time.monotonic()
    with pytest.raises(RankFailed, match=r"rank 1 of 2 failed \(exit code 1\): RuntimeError: injected fault"):
        run_selftest(2, 120, on_start=started.extend)
    assert time.monotonic() - t0 < 60, "the failure was not noticed before the timeout"
    assert len(started) == 2 and not any(os.path.exists(f"/proc/{pid}") for pid in started)
    assert _leftovers(job_root) == ([], [])


@pytest.mark.integration  # starts rank processes
def test_a_hanging_rank_times_out_and_nothing_is_left(job_root, monkeypatch):
    monkeypatch.setenv("FEDGATE_RANKS_FAULT", "hang:1")
    started = []
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=r"still running after engine.timeout-s=5 s"):
        run_selftest(2, 5, on_start=started.extend)
    assert 5 <= time.monotonic() - t0 < 5 + 10  # the timeout, plus at most the SIGTERM grace
    assert len(started) == 2 and not any(os.path.exists(f"/proc/{pid}") for pid in started)
    assert _leftovers(job_root) == ([], [])


@pytest.mark.integration  # starts rank processes
def test_ranks_die_with_a_killed_launcher(tmp_path):
    """SIGKILL skips the launcher's cleanup; the ranks' watchdogs see their parent gone."""
    assert run_selftest(2, 120) == 3.0  # 1 + 2: both ranks joined and all-reduced
    env = {**os.environ, "FEDGATE_RANKS_FAULT": "hang:1", "TMPDIR": str(tmp_path)}
    launcher = subprocess.Popen([sys.executable, "-c", "from fedgate.federated.ranks import run_selftest; "
                                 "run_selftest(2, 600)"], env=env)
    try:
        deadline = time.monotonic() + 60
        while len(processes_with_token()) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(processes_with_token()) == 2, "the ranks did not start"
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        gone_by = time.monotonic() + 5
        while processes_with_token() and time.monotonic() < gone_by:
            time.sleep(0.1)
        assert processes_with_token() == []
    finally:
        launcher.kill()
        launcher.wait()
        for pid in processes_with_token():  # only if the test failed: leave nothing running
            os.kill(pid, signal.SIGKILL)


def test_the_client_app_trains_on_ranks_when_the_world_size_is_above_one(monkeypatch):
    """The ClientApp hands the round to run_ranks and builds no model itself."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    import clients.app as client_app
    from fedgate.federated import protocol as P
    from fedgate.federated.client import LocalUpdate
    from fedgate.state import from_numpy

    state = {"head.bias": np.zeros(6, np.float32)}
    calls = []

    def fake_run_ranks(run_config, node_config, partition_id, num_partitions, global_state, server_round, prior,
                       *, pruned, personal):
        calls.append((partition_id, num_partitions, sorted(global_state), server_round, prior, pruned, personal))
        return LocalUpdate({"head.bias": np.ones(6, np.float32)}, 27, {"train-loss": 0.5, "world-size": 2.0}, {})

    def no_model_here(*args, **kwargs):
        raise AssertionError("the ClientApp built a model although ranks train the round")

    monkeypatch.setattr(client_app, "run_ranks", fake_run_ranks)
    monkeypatch.setattr(client_app, "ClientTask", no_model_here)
    for key in ("_run_id", "_node_id", "_task_id"):  # Flower stamps new messages with the task's identity
        monkeypatch.setattr(TaskIdentity, key, 1)
    msg = Message(RecordDict({P.ARRAYS: ArrayRecord(from_numpy(state)), P.CONFIG: ConfigRecord({P.SERVER_ROUND: 3})}),
                  dst_node_id=1, message_type="train")
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 1, "num-partitions": 2}, state=RecordDict(),
                      run_config={**RUN, "engine.world-size": 2, "train.batch-size": 8})
    reply = client_app.train(msg, context)
    assert calls == [(1, 2, ["head.bias"], 3, None, [], None)]
    metrics = reply.content[P.METRICS]
    assert metrics[P.NUM_EXAMPLES] == 27 and metrics[P.PARTITION_ID] == 1 and metrics["world-size"] == 2.0
    np.testing.assert_array_equal(reply.content[P.ARRAYS]["head.bias"].numpy(), np.ones(6, np.float32))
