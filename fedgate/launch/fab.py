"""The folder ``flwr run`` packs into the app bundle (FAB), staged with only the files the
bundle holds.

``flwr run DIR`` lists every file under DIR before it applies ``[tool.flwr.app] fab-include``.
In a checkout that also holds a virtual environment and run directories that listing alone
costs seconds of CPU on every run (65,000 files and 7.6 s on a 2-core machine with the
project's .venv inside). The launchers hand ``flwr run`` a temporary folder holding
pyproject.toml, .gitignore and the files ``fab-include`` names instead: the same bundle,
without the walk. An app without ``fab-include`` is used as it is (Flower's own rules then
decide what goes in, over the whole folder).
"""

from __future__ import annotations

import shutil
import tempfile
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ALWAYS = ("pyproject.toml", ".gitignore")


def fab_include(app: Path) -> list[str]:
    """The app's ``[tool.flwr.app] fab-include`` patterns (empty when it has none)."""
    config = tomllib.loads((app / "pyproject.toml").read_text())
    return list(config.get("tool", {}).get("flwr", {}).get("app", {}).get("fab-include", []))


def fab_sources(app: Path) -> list[Path]:
    """The files of ``app`` that its ``fab-include`` patterns name (no caches, no links)."""
    found = set()
    for pattern in fab_include(app):
        for path in app.glob(pattern):
            if path.is_file() and not path.is_symlink() and "__pycache__" not in path.parts:
                found.add(path)
    return sorted(found)


@contextmanager
def staged_app(app: str | Path) -> Iterator[Path]:
    """A folder to give ``flwr run``: a temporary copy of what the bundle holds, removed
    when the block ends, or ``app`` itself when it has no ``fab-include``."""
    app = Path(app).resolve()
    if not fab_include(app):
        yield app
        return
    with tempfile.TemporaryDirectory(prefix="fedgate-app-") as tmp:
        root = Path(tmp)
        for path in [*(app / name for name in ALWAYS if (app / name).is_file()), *fab_sources(app)]:
            dest = root / path.relative_to(app)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
        yield root
