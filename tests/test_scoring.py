"""`fedgate score`: rows from a file or standard input and preference pairs, scored the same
way every time, with the scores `fedgate evaluate` would rank by."""

import io
import json

import numpy as np
import pytest

from fedgate.cli import main
from fedgate.scoring import load_inputs, score
from fedgate.trained import load_trained

TINY = ["--backbone", "tiny-bert", "--max-steps", "1", "--quiet", "--no-baselines", "--set", "train.threads=1"]
ROWS = [{"prompt": "How do I sort a list?", "response": "Use sorted()."},
        {"prompt": "How do I sort a list?", "response": "No idea, look it up."},
        {"prompt": "What is a set?", "response": "An unordered collection of distinct items."}]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("score") / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    return out


def test_rows_from_a_file_get_attributes_and_an_alignment_score(run, tmp_path, capsys):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))  # no labels needed
    out = tmp_path / "scores.jsonl"
    assert main(["score", str(run), "--data", str(data), "--out", str(out), "--quiet"]) == 0
    first = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["row"] for r in first] == [0, 1, 2]
    assert set(first[0]) == {"row", "alignment_score", "p_aligned", "helpfulness", "correctness", "coherence",
                             "complexity", "verbosity"}
    for r in first:
        assert r["p_aligned"] == pytest.approx(1 / (1 + np.exp(-r["alignment_score"])), abs=1e-5)
    assert main(["score", str(run), "--data", str(data), "--out", str(out), "--quiet"]) == 0
    assert [json.loads(line) for line in out.read_text().splitlines()] == first  # deterministic


def test_stdin_rows_and_pairs_score_consistently(run):
    trained = load_trained(run)
    rows, is_pairs = load_inputs("-", io.StringIO("".join(json.dumps(r) + "\n" for r in ROWS)))
    assert not is_pairs
    by_row = score(trained, rows, is_pairs)
    pair_line = json.dumps({"prompt": ROWS[0]["prompt"], "chosen": ROWS[0]["response"], "rejected": ROWS[1]["response"]})
    pairs, is_pairs = load_inputs("-", io.StringIO(pair_line + "\n"))
    (pair,) = score(trained, pairs, is_pairs)
    assert pair["chosen_score"] == pytest.approx(by_row[0]["alignment_score"], abs=1e-4)
    assert pair["rejected_score"] == pytest.approx(by_row[1]["alignment_score"], abs=1e-4)
    assert pair["p_chosen"] == pytest.approx(1 / (1 + np.exp(pair["rejected_score"] - pair["chosen_score"])), abs=1e-5)
    assert pair["preferred"] == ("chosen" if pair["chosen_score"] >= pair["rejected_score"] else "rejected")


def test_pair_files_and_stdout(run, tmp_path, capsys, monkeypatch):
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"chosen": "\n\nHuman: hi\n\nAssistant: Hello! How can I help?",
                                "rejected": "\n\nHuman: hi\n\nAssistant: go away"}) + "\n")
    assert main(["score", str(run), "--data", str(data), "--quiet"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["pair"] == 0
    monkeypatch.setattr("sys.stdin", io.StringIO('{"prompt": "p"}\n'))
    assert main(["score", str(run), "--data", "-"]) == 2
    assert "fedgate: error: <stdin>:1: missing field 'response'" in capsys.readouterr().err
