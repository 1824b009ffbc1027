"""Preference pairs: HH-RLHF transcripts, TRL-style rows and pairs built from HelpSteer
ratings; every malformed input refused with its file and line."""

import gzip
import json

import pytest

from fedgate.data.pairs import PairReport, pairs_from_ratings, parse_pair, read_pairs, split_transcript
from fedgate.data.schema import DataError, rows_to_dataset

HH = {"chosen": "\n\nHuman: How do I sort a list?\n\nAssistant: Use sorted().\n\nHuman: In place?\n\n"
                "Assistant: Call list.sort().",
      "rejected": "\n\nHuman: How do I sort a list?\n\nAssistant: Use sorted().\n\nHuman: In place?\n\n"
                  "Assistant: No idea."}


def write_jsonl(path, rows, gz=False):
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_an_hh_transcript_splits_into_the_shared_conversation_and_the_two_last_replies(tmp_path):
    ds, report = read_pairs(write_jsonl(tmp_path / "p.jsonl.gz", [HH], gz=True))
    (row,) = ds.to_list()
    assert row["prompt"] == "Human: How do I sort a list?\n\nAssistant: Use sorted().\n\nHuman: In place?"
    assert (row["chosen"], row["rejected"], row["margin"], row["source"]) == ("Call list.sort().", "No idea.", 0, "hh")
    assert report.pairs == 1 and not report.differing_prefix


def test_pairs_whose_conversations_differ_before_the_last_reply_are_left_out_and_counted(tmp_path):
    differ = {"chosen": HH["chosen"], "rejected": HH["rejected"].replace("Use sorted().", "Use a loop.")}
    ds, report = read_pairs(write_jsonl(tmp_path / "p.jsonl", [HH, differ, HH]))
    assert ds.num_rows == 2 and report.differing_prefix == [f"{tmp_path / 'p.jsonl'}:2"]
    assert "1 left out because the two conversations differ" in report.summary()


def test_trl_rows_take_strings_or_chat_messages():
    report = PairReport()
    flat = parse_pair({"prompt": "Sort?", "chosen": "sorted()", "rejected": "no"}, "f:1", report)
    assert flat == {"prompt": "Sort?", "chosen": "sorted()", "rejected": "no", "margin": 0, "source": "trl"}
    chat = parse_pair({"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sort?"}],
                       "chosen": [{"role": "assistant", "content": "sorted()"}],
                       "rejected": [{"role": "user", "content": "Sort?"}, {"role": "assistant", "content": "no"}]},
                      "f:2", report)
    assert chat["prompt"] == "System: Be brief.\n\nHuman: Sort?"
    assert (chat["chosen"], chat["rejected"]) == ("sorted()", "no")


@pytest.mark.parametrize("row, message", [
    ({"chosen": HH["chosen"]}, "missing field 'rejected'"),
    ({"chosen": HH["chosen"], "rejected": 3}, "field 'rejected' must be a string, got int"),
    ({"chosen": "\n\nHuman: hi", "rejected": "\n\nHuman: hi"}, "does not end with an Assistant turn"),
    ({"chosen": "no turns here", "rejected": HH["rejected"]}, "field 'chosen' is not a transcript"),
    ({"chosen": "\n\nHuman: hi\n\nAssistant: ", "rejected": "\n\nHuman: hi\n\nAssistant: ok"}, "the chosen reply is empty"),
    ({"prompt": "p", "chosen": "same", "rejected": "same"}, "identical"),
    ({"prompt": "p", "chosen": [{"role": "user", "content": "x"}], "rejected": "r"}, "has no assistant message"),
    ({"prompt": "p", "chosen": [{"role": "bot", "content": "x"}], "rejected": "r"}, "has role 'bot'"),
    ({"prompt": "p", "chosen": {"text": "x"}, "rejected": "r"}, "must be a string or a list of messages"),
    (["chosen", "rejected"], "expected an object"),
])
def test_malformed_rows_are_refused_with_file_and_line(tmp_path, row, message):
    path = write_jsonl(tmp_path / "f.jsonl", [HH, row])
    with pytest.raises(DataError) as err:
        read_pairs(path)
    assert str(err.value).startswith(f"{path}:2: ") and message in str(err.value)


def test_skipping_malformed_rows_counts_and_locates_them(tmp_path):
    path = write_jsonl(tmp_path / "f.jsonl", [HH, {"chosen": HH["chosen"]}, HH])
    ds, report = read_pairs(path, bad_rows="skip")
    assert ds.num_rows == 2 and len(report.malformed) == 1 and report.malformed[0].startswith(f"{path}:2: missing")


def test_broken_files_name_the_file(tmp_path):
    bad_json = write_jsonl(tmp_path / "j.jsonl", [HH, "{not json"])
    with pytest.raises(DataError, match=r"j.jsonl:2: malformed JSON"):
        read_pairs(bad_json)
    bad_gz = tmp_path / "g.jsonl.gz"
    bad_gz.write_bytes(b"this is not gzip")
    with pytest.raises(DataError, match=r"g.jsonl.gz: not a readable gzip file"):
        read_pairs(bad_gz)
    latin = tmp_path / "l.jsonl"
    latin.write_bytes(json.dumps(HH).encode() + b"\n" + b'{"prompt": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"l.jsonl:2: not UTF-8 text \(byte offset \d+"):
        read_pairs(latin)
    with pytest.raises(DataError, match="unsupported file type"):
        read_pairs(write_jsonl(tmp_path / "p.csv", [HH]))
    with pytest.raises(DataError, match="no such file"):
        read_pairs(tmp_path / "absent.jsonl")
    with pytest.raises(DataError, match="no usable pairs"):
        read_pairs(write_jsonl(tmp_path / "e.jsonl", []))


def test_split_transcript_keeps_multi_turn_order():
    turns = split_transcript(HH["chosen"], "f:1", "chosen")
    assert [s for s, _ in turns] == ["Human", "Assistant", "Human", "Assistant"]


def test_pairs_from_helpsteer_ratings_keep_the_margin():
    rows = [{"prompt": "q1", "response": r, "helpfulness": h, "correctness": 2, "coherence": 2, "complexity": 2,
             "verbosity": 2} for r, h in (("a", 4), ("b", 1), ("c", 4))]
    rows.append({**rows[0], "prompt": "q2", "response": "alone"})
    pairs = pairs_from_ratings(rows_to_dataset(rows)).to_list()
    assert sorted((p["chosen"], p["rejected"], p["margin"]) for p in pairs) == [("a", "b", 3), ("c", "b", 3)]
    with pytest.raises(DataError, match="no two responses to one prompt differ"):
        pairs_from_ratings(rows_to_dataset(rows[3:]))


def test_the_real_hh_rlhf_pairs_load(shared_data_dir):
    path = shared_data_dir / "hh-rlhf-harmless" / "pairs.jsonl.gz"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    with pytest.raises(DataError, match=r"pairs.jsonl.gz:\d+: the chosen reply is empty"):
        read_pairs(path)  # two real pairs prefer an empty reply: strict loading names the first
    ds, report = read_pairs(path, bad_rows="skip")
    assert len(report.malformed) == 2 and len(report.differing_prefix) == 5
    assert ds.num_rows == 1534 - 2 - 5 and report.pairs == ds.num_rows
    assert all(p.startswith("Human: ") and "\n\nAssistant: " not in p[-12:] for p in ds["prompt"][:50])
