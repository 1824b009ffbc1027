"""Bad data in a real simulation: the run fails with an error that names the file and line
or the empty partition, and leaves nothing that looks like a result (no predictions, no
report, summary.json says failed)."""

import json

import pytest

from fedgate.rundir import RunDir
from fedgate.launch.simulation import simulate

pytestmark = pytest.mark.integration

TINY = 'model.backbone="tiny-bert" server.eval-limit=30 train.batch-size=8 server.noise-rates="" train.threads=1 server.baselines=false'
ATTRS = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")


def _row(i: int) -> str:
    return json.dumps({"prompt": f"question {i}?", "response": f"answer number {i}.",
                       **{a: (i + k) % 5 for k, a in enumerate(ATTRS)}})


def _assert_failed_without_results(run_dir, *needles):
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed"
    for needle in needles:
        assert needle in summary["error"], summary["error"]
    assert not (run_dir / "test_predictions.csv").exists() and not (run_dir / "report.md").exists()
    assert "final" not in summary


def test_a_malformed_line_fails_the_run_naming_file_and_line(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "test"):
        (data / f"{split}.jsonl").write_text("\n".join(_row(i) for i in range(20)) + "\n")
    lines = [_row(i) for i in range(20)]
    lines[2] = '{"prompt": "cut off'
    (data / "validation.jsonl").write_text("\n".join(lines) + "\n")
    code, run_dir = simulate([TINY + f' data.source="{data}" federation.rounds=1'], num_supernodes=2,
                             out=tmp_path / "run", timeout=300)
    assert code == 1
    _assert_failed_without_results(run_dir, "validation.jsonl:3", "malformed JSON")
    assert RunDir(run_dir).rounds() == []


def test_more_clients_than_rows_fails_naming_the_empty_partition(tmp_path):
    code, run_dir = simulate([TINY + ' data.limit=3 shards.partitioner="iid" federation.rounds=2 '
                                     'federation.max-idle-rounds=1'], num_supernodes=4, out=tmp_path / "run",
                             timeout=300)
    assert code == 1
    _assert_failed_without_results(run_dir, "no usable client update", "partition")
    rounds = RunDir(run_dir).rounds()
    assert [r["round"] for r in rounds] == [0, 1]  # stopped after the first round without an update
    failed = [f for f in rounds[1]["failures"] if f["stage"] == "train"]
    assert not rounds[1]["aggregated"] and len(failed) == 4
    assert all("partition sizes: [1, 1, 1, 0]" in f["reason"] for f in failed)
