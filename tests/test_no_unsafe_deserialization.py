"""Nothing fedgate reads from a peer or from disk can run code: messages carry arrays
(Flower ArrayRecords), checkpoints are safetensors plus JSON. This scans fedgate's own
source for the ways Python code could unpickle data."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fedgate", "clients", "server", "simulations")
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve", "jsonpickle"}


def _findings(tree: ast.AST) -> list[str]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            out.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
            kwargs = {k.arg: k.value for k in node.keywords}
            if owner == "torch" and node.func.attr == "load":
                safe = kwargs.get("weights_only")
                if not (isinstance(safe, ast.Constant) and safe.value is True):
                    out.append("torch.load without weights_only=True")
            if owner in ("np", "numpy") and node.func.attr == "load":
                flag = kwargs.get("allow_pickle")
                if isinstance(flag, ast.Constant) and flag.value is True:
                    out.append("np.load(allow_pickle=True)")
            if owner == "yaml" and node.func.attr in ("load", "unsafe_load", "full_load"):
                out.append(f"yaml.{node.func.attr}")
    return out


def test_the_scanner_finds_what_it_looks_for():
    code = "import pickle\nimport torch\nimport numpy as np\ntorch.load(p)\nnp.load(p, allow_pickle=True)\n"
    assert _findings(ast.parse(code)) == ["import pickle", "torch.load without weights_only=True",
                                          "np.load(allow_pickle=True)"]
    assert _findings(ast.parse("torch.load(p, weights_only=True)\nnp.load(p)\n")) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_no_unpickling_in_fedgate_code(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    bad = {str(f.relative_to(ROOT)): found for f in files if (found := _findings(ast.parse(f.read_text())))}
    assert bad == {}
