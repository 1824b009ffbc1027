"""Run directories: strict JSON lines, checkpoints, resuming without repeating a round."""

import json

import numpy as np
import pytest

from fedgate.rundir import RunDir, json_safe, load_checkpoint


def test_json_safe_turns_nan_into_null():
    assert json_safe({"a": float("nan"), "b": [np.float32(1.5), float("inf")], "c": np.int64(3)}) == \
        {"a": None, "b": [1.5, None], "c": 3}


def test_rounds_and_checkpoints_round_trip(tmp_path):
    run = RunDir(tmp_path / "run")
    state = {"x.lora_A": np.arange(6, dtype=np.float32).reshape(2, 3)}
    for r in (1, 2, 3):
        run.append_round({"round": r, "server_eval": {"auc": 0.5 + r / 10, "f1": float("nan")}})
        run.save_checkpoint(r, {k: v + r for k, v in state.items()}, {"config": {"a.b": 1}, "gate_profile": {}})
    lines = (run.path / "rounds.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [1, 2, 3]
    assert json.loads(lines[0])["server_eval"]["f1"] is None  # strict JSON, no NaN token
    assert sorted(run.checkpoints()) == [1, 2, 3]
    found, done, loaded, meta = load_checkpoint(run.path)
    assert found.path == run.path and done == 3 and meta["config"] == {"a.b": 1}
    np.testing.assert_array_equal(loaded["x.lora_A"], state["x.lora_A"] + 3)
    _, done, loaded, _ = load_checkpoint(run.path / "checkpoints" / "round-002.safetensors")
    assert done == 2
    run.keep_rounds_through(2)
    assert [r["round"] for r in run.rounds()] == [1, 2]


def test_bad_resume_targets_and_bad_lines_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoints"):
        load_checkpoint(RunDir(tmp_path / "empty").path)
    with pytest.raises(FileNotFoundError, match="neither a run directory"):
        load_checkpoint(tmp_path / "missing")
    run = RunDir(tmp_path / "bad")
    (run.path / "rounds.jsonl").write_text('{"round": 1}\n{oops\n')
    with pytest.raises(ValueError, match=r"rounds.jsonl:2"):
        run.rounds()
