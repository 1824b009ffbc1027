"""The layering rule, read from the source: every import points to the importer's own layer
or one below it, and no module imports itself back through others. Imports under
``if TYPE_CHECKING:`` are annotations only and do not count; imports inside functions do.
Every package also imports cleanly on its own."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fedgate", "server", "clients", "simulations")

# low to high; a module belongs to the layer of its longest matching prefix
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("numeric rules and errors", ("fedgate.errors", "fedgate.aggregation", "fedgate.memory", "fedgate.tiny",
                                  "fedgate.devices")),
    ("config", ("fedgate.config",)),
    ("data", ("fedgate.data", "fedgate.metrics")),
    ("models", ("fedgate.families", "fedgate.adapters", "fedgate.inject", "fedgate.peft_methods", "fedgate.model",
                "fedgate.state", "fedgate.losses", "fedgate.batching", "fedgate.hidden_store", "fedgate.ridge",
                "fedgate.cheap_baselines", "fedgate.rundir")),
    ("training", ("fedgate.evaluation", "fedgate.train", "fedgate.engine", "fedgate.pairwise", "fedgate.trained",
                  "fedgate.scoring", "fedgate.export", "fedgate.centralized", "fedgate.run_outputs")),
    ("strategies", ("fedgate.strategies",)),
    ("federated runtime", ("fedgate.federated",)),
    ("Flower glue", ("server", "clients")),
    ("launchers and command line", ("fedgate.launch", "fedgate.cli")),
    ("scripts", ("simulations",)),
]
OWN = {"fedgate": None}  # the top-level package __init__ itself: imports nothing of ours


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    return skip


def imports_of(module: str) -> set[str]:
    tree = ast.parse(MODULES[module].read_text())
    skip = _type_checking_nodes(tree)
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in PACKAGES and (target := _resolve(name)) and target != module:
                out.add(target)
    return out


def layer_of(module: str) -> int:
    best, index = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, index = len(prefix), i
    if index is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in {Path(__file__).name}")
    return index


def test_every_module_has_a_layer():
    for module in MODULES:
        if module not in OWN and module not in PACKAGES:
            layer_of(module)


def test_imports_only_point_down():
    upward = []
    for module in MODULES:
        if module in OWN or module in PACKAGES:
            continue
        for target in imports_of(module):
            if target in PACKAGES:
                continue
            if layer_of(target) > layer_of(module):
                upward.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} "
                              f"({LAYERS[layer_of(target)][0]})")
    assert not upward, "\n".join(sorted(upward))


def test_no_import_cycles():
    graph = {m: imports_of(m) for m in MODULES}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(module):] + [module]))
        if module in done:
            return
        for target in sorted(graph.get(module, ())):
            visit(target, path + [module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_the_rule_catches_an_upward_import():
    assert layer_of("fedgate.aggregation.lora") < layer_of("fedgate.federated.protocol")
    assert layer_of("fedgate.cli") > layer_of("server.federation") > layer_of("fedgate.strategies.scaffold")
    assert layer_of("simulations.study") == len(LAYERS) - 1


@pytest.mark.parametrize("package", ["fedgate", "fedgate.config", "fedgate.strategies", "fedgate.aggregation",
                                     "fedgate.federated", "fedgate.data", "fedgate.launch", "server", "clients"])
def test_each_package_imports_on_its_own(package):
    importlib.import_module(package)


def test_the_aggregation_math_needs_numpy_and_scipy_only():
    # imported when used: dp_accounting, the privacy accountant; scipy, LAPACK's gesvd where gesdd fails
    allowed = {"numpy", "scipy", "dp_accounting", "fedgate"}
    for module, path in MODULES.items():
        if not module.startswith("fedgate.aggregation"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
            for name in names:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names or top in allowed, f"{module} imports {name}"
