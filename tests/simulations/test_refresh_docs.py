"""Refreshing results tables in documents from the files the studies wrote: a marked table
takes its source's content, a missing source leaves it alone, a broken marker names its
line, and --check changes nothing but exits 1 when a table is stale."""

import pytest

from simulations.refresh_docs import main, refresh

DOC = """# Results

<!-- table: runs/a/results.md -->
| old | table |
|---|---|
<!-- /table -->

Text between.

<!-- table: runs/gone/results.md -->
| kept |
|---|
<!-- /table -->
"""


@pytest.fixture
def root(tmp_path):
    (tmp_path / "runs" / "a").mkdir(parents=True)
    (tmp_path / "runs" / "a" / "results.md").write_text("| variant | auc |\n|---|---|\n| x | 0.7000 |\n")
    return tmp_path


def test_a_marked_table_takes_its_sources_content_and_a_missing_source_keeps_it(root):
    out, changed, missing = refresh(DOC, root)
    assert changed == ["runs/a/results.md"] and missing == ["runs/gone/results.md"]
    assert "| x | 0.7000 |\n<!-- /table -->" in out and "| old | table |" not in out
    assert "| kept |" in out and "Text between." in out
    again, changed, _ = refresh(out, root)
    assert again == out and changed == []


@pytest.mark.parametrize("text, line", [
    ("a\n<!-- table: x.md -->\n| t |\n", 2),  # never closed
    ("<!-- table: x.md -->\n<!-- table: y.md -->\n<!-- /table -->\n", 1),  # closed only after the next opens
    ("a\nb\n<!-- /table -->\n", 3),  # closed without an opening
])
def test_a_broken_marker_is_refused_naming_its_line(root, text, line):
    with pytest.raises(ValueError, match=f"^line {line}:"):
        refresh(text, root)


def test_check_lists_stale_tables_exits_1_and_writes_nothing(root, capsys):
    doc = root / "doc.md"
    doc.write_text(DOC)
    assert main([str(doc), "--root", str(root), "--check"]) == 1
    assert doc.read_text() == DOC
    assert "stale: runs/a/results.md" in capsys.readouterr().out
    assert main([str(doc), "--root", str(root)]) == 0
    assert "| x | 0.7000 |" in doc.read_text()
    assert main([str(doc), "--root", str(root), "--check"]) == 0


def test_the_strategy_table_comes_from_the_registry(tmp_path):
    from fedgate import strategies

    doc = "<!-- table: fedgate.strategies -->\n| stale |\n<!-- /table -->\n"
    new, changed, missing = refresh(doc, tmp_path)
    assert changed == ["fedgate.strategies"] and not missing
    assert new == f"<!-- table: fedgate.strategies -->\n{strategies.table()}\n<!-- /table -->\n"
