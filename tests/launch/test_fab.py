"""The folder the launchers hand ``flwr run`` builds the same app bundle (FAB) as the
checkout itself, byte for byte, without Flower walking the whole checkout."""

import hashlib
from pathlib import Path

import pytest
from flwr.cli.build import build_fab_from_disk

from fedgate.launch.fab import fab_sources, staged_app

REPO = Path(__file__).resolve().parents[2]

# Flower's bundle builder calls pathspec's deprecated "gitwildmatch" factory once per pattern
pytestmark = pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")


def test_the_staged_folder_builds_the_checkouts_bundle_byte_for_byte():
    whole = build_fab_from_disk(REPO)
    with staged_app(REPO) as folder:
        assert folder != REPO
        staged = build_fab_from_disk(folder)
        copied = {p.relative_to(folder) for p in folder.rglob("*") if p.is_file()}
    assert not folder.exists()  # removed when the block ended
    assert hashlib.sha256(staged).hexdigest() == hashlib.sha256(whole).hexdigest()
    assert Path("fedgate/launch/fab.py") in copied and Path("pyproject.toml") in copied
    assert not any(part.startswith(".venv") or part in ("tests", "results", "runs") for p in copied for part in p.parts)


def test_the_sources_are_what_fab_include_names(tmp_path):
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    for name in ("pkg/a.py", "pkg/sub/b.py", "pkg/notes.txt", "other.py"):
        (tmp_path / name).write_text("x = 1\n")
    (tmp_path / "pyproject.toml").write_text('[tool.flwr.app]\nfab-include = ["pkg/**/*.py"]\n')
    assert [p.relative_to(tmp_path).as_posix() for p in fab_sources(tmp_path)] == ["pkg/a.py", "pkg/sub/b.py"]


def test_an_app_without_fab_include_is_used_as_it_is(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "app"\n')
    with staged_app(tmp_path) as folder:
        assert folder == tmp_path.resolve()
