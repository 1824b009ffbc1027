"""Loading HelpSteer-format files: real sample rows, format round-trips, and rejection of
every malformed case with its exact location."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fedgate.data import ATTRIBUTES, DataError, load_helpsteer
from fedgate.data.schema import COLUMNS

SAMPLE_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "helpsteer2-sample"
RAW_FIELDS = ("prompt", "response", *ATTRIBUTES)


@pytest.fixture(scope="module")
def sample_dir() -> Path:
    if not (SAMPLE_DIR / "train.jsonl").is_file():
        pytest.skip(f"HelpSteer2 sample absent at {SAMPLE_DIR}")
    return SAMPLE_DIR


@pytest.fixture(scope="module")
def sample_rows(sample_dir: Path) -> list[dict]:
    with (sample_dir / "train.jsonl").open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def good_row(**changes) -> dict:
    row = {"prompt": "What is a list?", "response": "A mutable sequence. It holds items in order.",
           "helpfulness": 3, "correctness": 4, "coherence": 4, "complexity": 1, "verbosity": 2}
    row.update(changes)
    return row


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- real rows


@pytest.mark.parametrize("split", ["train", "validation"])
def test_sample_files_load_with_canonical_columns(sample_dir: Path, split: str) -> None:
    ds = load_helpsteer(str(sample_dir / f"{split}.jsonl"))
    assert len(ds) == 50
    assert ds.column_names == list(COLUMNS)
    for name in ATTRIBUTES:
        assert ds.features[name].dtype == "int64"
        assert set(ds[name]) <= {0, 1, 2, 3, 4}
    assert set(ds["domain"]) == {""} and set(ds["kind"]) == {""}


def test_sample_folder_picks_split_files(sample_dir: Path) -> None:
    for split in ("train", "validation"):
        from_folder = load_helpsteer(str(sample_dir), split)
        from_file = load_helpsteer(str(sample_dir / f"{split}.jsonl"))
        assert from_folder.to_list() == from_file.to_list()


def test_text_is_kept_unchanged(sample_dir: Path, sample_rows: list[dict]) -> None:
    ds = load_helpsteer(str(sample_dir / "train.jsonl"))
    assert ds["prompt"] == [r["prompt"] for r in sample_rows]
    assert ds["response"] == [r["response"] for r in sample_rows]


def test_multiturn_prompt_kept_verbatim(tmp_path: Path) -> None:
    prompt = "Hi there\n<extra_id_1>Assistant\nHello!\n<extra_id_1>User\nWhat is 2+2?"
    ds = load_helpsteer(str(write_jsonl(tmp_path / "t.jsonl", [good_row(prompt=prompt)])))
    assert ds[0]["prompt"] == prompt


def test_validation_alias_and_extra_columns_dropped(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "val.jsonl", [good_row(extra="x", domain="lists")])
    ds = load_helpsteer(str(tmp_path), "validation")
    assert ds.column_names == list(COLUMNS)
    assert ds[0]["domain"] == "lists"


def test_csv_round_trip(tmp_path: Path, sample_dir: Path, sample_rows: list[dict]) -> None:
    path = tmp_path / "rows.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=RAW_FIELDS)
        writer.writeheader()
        writer.writerows(sample_rows)  # multi-line responses become quoted cells
    expected = load_helpsteer(str(sample_dir / "train.jsonl")).to_list()
    assert load_helpsteer(str(path)).to_list() == expected


def test_parquet_round_trip_and_folder(tmp_path: Path, sample_dir: Path, sample_rows: list[dict]) -> None:
    pq.write_table(pa.Table.from_pylist(sample_rows), tmp_path / "test.parquet")
    expected = load_helpsteer(str(sample_dir / "train.jsonl")).to_list()
    assert load_helpsteer(str(tmp_path / "test.parquet")).to_list() == expected
    assert load_helpsteer(str(tmp_path), "test").to_list() == expected


def test_json_array_and_json_lines(tmp_path: Path) -> None:
    rows = [good_row(), good_row(helpfulness=3.0)]  # an integer-valued float is accepted
    (tmp_path / "a.json").write_text(json.dumps(rows), encoding="utf-8")
    write_jsonl(tmp_path / "b.json", rows)
    for name in ("a.json", "b.json"):
        ds = load_helpsteer(str(tmp_path / name))
        assert ds["helpfulness"] == [3, 3]


def test_limit_is_a_seeded_ordered_subset(sample_dir: Path) -> None:
    full = load_helpsteer(str(sample_dir / "train.jsonl"))["response"]
    a = load_helpsteer(str(sample_dir / "train.jsonl"), limit=10, seed=1)["response"]
    b = load_helpsteer(str(sample_dir / "train.jsonl"), limit=10, seed=1)["response"]
    assert a == b and len(a) == 10
    positions = [full.index(r) for r in a]
    assert positions == sorted(positions)


# ----------------------------------------------------------------------------- malformed input


def test_malformed_json_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [good_row(), "", '{"prompt": "x", ', good_row()])
    with pytest.raises(DataError, match=r"bad\.jsonl:3: malformed JSON"):
        load_helpsteer(str(path))


def test_missing_field(tmp_path: Path) -> None:
    row = good_row()
    del row["coherence"]
    path = write_jsonl(tmp_path / "bad.jsonl", [good_row(), row])
    with pytest.raises(DataError, match=r"bad\.jsonl:2: missing field 'coherence'"):
        load_helpsteer(str(path))


@pytest.mark.parametrize("value", [5.5, "high", True, "3", None])
def test_non_integer_attribute(tmp_path: Path, value) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [good_row(), good_row(), good_row(helpfulness=value)])
    expected = "missing field 'helpfulness'" if value is None else "field 'helpfulness' must be an integer 0-4"
    with pytest.raises(DataError, match=rf"bad\.jsonl:3: {expected}"):
        load_helpsteer(str(path))


def test_non_integer_message_shows_value(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [good_row(helpfulness=5.5)])
    with pytest.raises(DataError, match=r"bad\.jsonl:1: field 'helpfulness' must be an integer 0-4, got 5\.5$"):
        load_helpsteer(str(path))


@pytest.mark.parametrize("value", [5, -1])
def test_out_of_range_attribute(tmp_path: Path, value: int) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [good_row(), good_row(verbosity=value)])
    with pytest.raises(DataError, match=rf"bad\.jsonl:2: field 'verbosity' must be an integer 0-4, got {value}"):
        load_helpsteer(str(path))


@pytest.mark.parametrize("field,value,problem", [
    ("response", "", "field 'response' is empty"),
    ("response", "  \n\t", "field 'response' is empty"),
    ("prompt", 123, "field 'prompt' must be a string"),
])
def test_bad_text(tmp_path: Path, field: str, value, problem: str) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [good_row(), good_row(), good_row(), good_row(**{field: value})])
    with pytest.raises(DataError, match=rf"bad\.jsonl:4: {problem}"):
        load_helpsteer(str(path))


def test_csv_line_counts_header_and_multiline_cells(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=RAW_FIELDS)
        writer.writeheader()  # line 1
        writer.writerow(good_row())  # line 2
        writer.writerow(good_row(response="Two lines.\nSecond line."))  # lines 3-4
        writer.writerow(good_row(complexity="high"))  # line 5
    with pytest.raises(DataError, match=r"bad\.csv:5: field 'complexity' must be an integer 0-4, got 'high'"):
        load_helpsteer(str(path))


def test_csv_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("prompt,response,helpfulness\nq,an answer,3\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.csv:2: missing field 'correctness'"):
        load_helpsteer(str(path))


def test_parquet_and_json_array_report_row(tmp_path: Path) -> None:
    rows = [good_row(), good_row(), good_row(correctness=7)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "bad.parquet")
    (tmp_path / "bad.json").write_text(json.dumps(rows), encoding="utf-8")
    for name in ("bad.parquet", "bad.json"):
        with pytest.raises(DataError, match=rf"{name}: row 2 \(0-based\): field 'correctness'.*got 7"):
            load_helpsteer(str(tmp_path / name))


def test_wrong_file_type(tmp_path: Path) -> None:
    path = tmp_path / "rows.txt"
    path.write_text("hello\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"rows\.txt: unsupported file type '\.txt'; supported: \.jsonl, \.json, \.parquet, \.csv"):
        load_helpsteer(str(path))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file"):
        load_helpsteer(str(tmp_path / "nope.jsonl"))


def test_folder_without_split_file(tmp_path: Path, sample_dir: Path) -> None:
    shutil.copy(sample_dir / "train.jsonl", tmp_path / "train.jsonl")
    (tmp_path / "notes.md").write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match=r"no file for split 'test'.*found: \['notes\.md', 'train\.jsonl'\]"):
        load_helpsteer(str(tmp_path), "test")


# ----------------------------------------------------------------------------- hub and embedded


def test_hub_unreachable_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nvidia/HelpSteer2' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"nvidia/HelpSteer2\[train\]: the Hugging Face hub is unreachable.*'embedded'"):
        load_helpsteer("nvidia/HelpSteer2")


def test_hub_rows_are_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [good_row(), good_row(helpfulness=9)]
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split: datasets.Dataset.from_list(rows))
    with pytest.raises(DataError, match=r"nvidia/HelpSteer\[validation\]: row 1 \(0-based\): field 'helpfulness'"):
        load_helpsteer("nvidia/HelpSteer", "validation")
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split: datasets.Dataset.from_list(rows[:1]))
    assert load_helpsteer("nvidia/HelpSteer2").column_names == list(COLUMNS)


def test_embedded_source() -> None:
    ds = load_helpsteer("embedded", "validation", limit=100)
    assert len(ds) == 100 and ds.column_names == list(COLUMNS)
    with pytest.raises(DataError, match="unknown split 'dev'"):
        load_helpsteer("embedded", "dev")
