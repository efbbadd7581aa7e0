"""The package's import graph: no cycle, and no module imports a layer above its own.

Device: none (reads source files only). Every import counts, also those inside functions
(lazy imports that keep command help fast) and under TYPE_CHECKING: a lazy upward import
is still an upward dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sftkd_cli"

#: the layers, lowest first; a module belongs to the first layer with a matching prefix (a
#: prefix names a module or a package and everything in it). A module may import its own layer
#: and the layers below it, never one above.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("sftkd_cli.errors", "sftkd_cli.choices", "sftkd_cli.acquisition", "sftkd_cli.run_files", "sftkd_cli.name_checks"),
    ("sftkd_cli.files", "sftkd_cli.h5_data", "sftkd_cli.memory", "sftkd_cli.signals", "sftkd_cli.torchrun", "sftkd_cli.mri", "sftkd_cli.metrics", "sftkd_cli.scoring", "sftkd_cli.metrics_file", "sftkd_cli.bench_file", "sftkd_cli.torch_metrics",
     "sftkd_cli.recipes", "sftkd_cli.recipe_words", "sftkd_cli.recipe_values", "sftkd_cli.safe_yaml", "sftkd_cli.distill.catalog"),
    ("sftkd_cli.data", "sftkd_cli.models", "sftkd_cli.distill"),
    ("sftkd_cli.config", "sftkd_cli.init_from", "sftkd_cli.runs", "sftkd_cli.output_target", "sftkd_cli.runtime", "sftkd_cli.layout", "sftkd_cli.checkpoints"),
    ("sftkd_cli.training", "sftkd_cli.evaluate", "sftkd_cli.eval_folders", "sftkd_cli.recon_file", "sftkd_cli.export", "sftkd_cli.export_files", "sftkd_cli.export_target", "sftkd_cli.exported", "sftkd_cli.eta"),
    ("sftkd_cli.report", "sftkd_cli.bench"),
    ("sftkd_cli.reproduce",),
    ("sftkd_cli.cli", "sftkd_cli.__main__"),
)
#: imported by every layer for `__version__` alone
ANYWHERE = {"sftkd_cli"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The sftkd_cli modules `path` imports (`from package import submodule` names the submodule)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "sftkd_cli")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "sftkd_cli":
            subs = {f"{node.module}.{alias.name}" for alias in node.names} & known
            found.update(subs or {node.module})
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(path, set(known)) - {name} for name, path in known.items()}


def layer_of(module: str) -> int:
    if module in ANYWHERE:
        return 0
    for index, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_every_module_has_a_layer() -> None:
    for name in modules():
        layer_of(name)


def test_no_module_imports_a_higher_layer() -> None:
    upward = sorted(
        f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
        for module, targets in graph().items()
        for target in targets - ANYWHERE
        if layer_of(target) > layer_of(module)
    )
    assert upward == []


def test_the_import_graph_has_no_cycle() -> None:
    edges = {module: targets - ANYWHERE for module, targets in graph().items()}
    assert find_cycle(edges) is None, " -> ".join(find_cycle(edges) or [])


def test_no_module_is_too_long() -> None:
    """Small modules with one job: none over 600 lines."""
    long = {name: n for name, path in modules().items() if (n := len(path.read_text(encoding="utf-8").splitlines())) > 600}
    assert long == {}


@pytest.mark.parametrize("edges, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"a2"}, "a2": set(), "x": {"y"}, "y": {"x"}}, ["x", "y", "x"]),
])
def test_find_cycle_finds_cycles(edges: dict[str, set[str]], expected: list[str] | None) -> None:
    """The checker itself: it must report a cycle when there is one."""
    assert find_cycle(edges) == expected
