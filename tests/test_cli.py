"""The command line as a new user meets it: every user error is one line on stderr naming
the file, line or key, exit code 2, and no output folder; --debug gives the traceback."""

import json

import pytest

from fedgate.cli import UserError, main, toml_value

TINY = ["--backbone", "tiny-bert", "--max-steps", "1", "--quiet", "--no-baselines"]
ROW = {"prompt": "How do I sort?", "response": "Use sorted().", "helpfulness": 3, "correctness": 3,
       "coherence": 4, "complexity": 1, "verbosity": 1}


def _fails(argv, capsys, tmp_path, fragment):
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out)] if argv[0] == "train" else argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedgate: error: "), captured.err
    assert fragment in lines[0], lines[0]
    assert not out.exists()  # nothing written
    return lines[0]


def test_a_malformed_row_names_file_and_line(tmp_path, capsys):
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps(ROW) + "\n" + json.dumps({**ROW, "helpfulness": 7}) + "\n")
    _fails(["train", *TINY, "--data", str(data)], capsys, tmp_path,
           f"{data}:2: field 'helpfulness' must be an integer 0-4, got 7")


def test_bytes_that_are_not_utf8_name_file_line_and_offset(tmp_path, capsys):
    data = tmp_path / "rows.jsonl"
    data.write_bytes(json.dumps(ROW).encode() + b"\n" + b'{"prompt": "caf\xe9"}\n')
    line = _fails(["train", *TINY, "--data", str(data)], capsys, tmp_path, f"{data}:2: not UTF-8 text (byte offset")
    offset = len(json.dumps(ROW)) + 1 + len('{"prompt": "caf')
    assert f"(byte offset {offset}: " in line


def test_a_missing_file_an_unknown_key_and_a_bad_value(tmp_path, capsys):
    _fails(["train", *TINY, "--data", str(tmp_path / "absent.jsonl")], capsys, tmp_path, "absent.jsonl")
    _fails(["train", *TINY, "--set", "train.learning-rate=1"], capsys, tmp_path, "unknown config key 'train.learning-rate'")
    _fails(["train", *TINY, "--set", "adapter.r=0"], capsys, tmp_path, "adapter.r")
    _fails(["train", *TINY, "--set", "nonsense"], capsys, tmp_path, "--set expects KEY=VALUE")


def test_an_unreadable_checkpoint_and_an_unknown_model(tmp_path, capsys):
    bad = tmp_path / "adapters.safetensors"
    bad.write_bytes(b"not a safetensors file")
    _fails(["evaluate", str(bad), "--quiet"], capsys, tmp_path, "")
    _fails(["train", *TINY[2:], "--backbone", str(tmp_path / "no-such-model")], capsys, tmp_path, "no-such-model")


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(UserError, match="train.learning-rate"):
        main(["--debug", "train", *TINY, "--set", "train.learning-rate=1", "--out", str(tmp_path / "o")])
    with pytest.raises(UserError):
        main(["train", *TINY, "--set", "train.learning-rate=1", "--out", str(tmp_path / "o"), "--debug"])


def test_set_values_are_toml_values():
    assert toml_value("16") == 16 and toml_value("0.5") == 0.5 and toml_value("true") is True
    assert toml_value('"tiny-bert"') == "tiny-bert" and toml_value("tiny-bert") == "tiny-bert"


def test_simulate_refuses_an_unknown_key_the_same_way(tmp_path, capsys):
    line = _fails(["simulate", "--run-config", "adapter.rank=4", "--out", str(tmp_path / "out")], capsys, tmp_path,
                  "adapter.rank")
    assert "[tool.flwr.app.config]" in line


def test_strategies_lists_every_registered_rule_and_a_bad_one_is_one_line(tmp_path, capsys):
    from fedgate import strategies

    assert main(["strategies"]) == 0
    out = capsys.readouterr().out
    assert all(f"| `{name}` |" in out for name in strategies.names())
    _fails(["train", *TINY, "--set", 'federation.strategy="fedsgd"'], capsys, tmp_path,
           "federation.strategy must be one of")
