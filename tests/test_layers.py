"""The package's structure: no import cycles, and the library layer never imports the application layer."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest


PACKAGE = Path(__file__).resolve().parent.parent / "hf_seqobj"

APPLICATION = (
    "hf_seqobj.cli",
    "hf_seqobj.run",
    "hf_seqobj.arguments",
    "hf_seqobj.tasks",
    "hf_seqobj.modeling",
    "hf_seqobj.metrics.modules",
)
"""The application layer: the command line, whole runs, argument parsing, tasks, the offline model factory and the
`evaluate` module scripts (entry points that `evaluate.load` runs, which the tasks' metrics back). The rest
(objectives, oracles, rewards, decoding, backspace, trainers, metrics, ...) is the library layer."""


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


@functools.cache
def import_graph() -> dict[str, set[str]]:
    """Module -> the hf_seqobj modules it imports at run time, function-level imports included (imports under
    `if TYPE_CHECKING:` are left out: they never run). `from hf_seqobj.a import b` counts as importing module
    `hf_seqobj.a.b` where that is a module, else `hf_seqobj.a`; the implicit import of parent packages is left out."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        found: set[str] = set()

        def visit(node: ast.AST, found: set[str] = found) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and _is_type_checking(child):
                    continue
                if isinstance(child, ast.Import):
                    found.update(alias.name for alias in child.names)
                elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                    for alias in child.names:
                        full = f"{child.module}.{alias.name}"
                        found.add(full if full in modules else child.module)
                visit(child, found)

        visit(ast.parse(path.read_text(encoding="utf-8")))
        graph[name] = {module for module in found if module in modules and module != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return components


def test_the_graph_sees_function_level_imports():
    graph = import_graph()
    assert "hf_seqobj.objectives.base" in graph["hf_seqobj.objectives.mle"]
    assert "hf_seqobj.run" in graph["hf_seqobj.cli.commands"]  # the commands import run inside their functions


def test_no_import_cycles():
    assert _cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("module", sorted(name for name in _modules() if not name.startswith(APPLICATION)))
def test_the_library_layer_never_imports_the_application_layer(module):
    imported = import_graph()[module]
    assert not [name for name in imported if name.startswith(APPLICATION)], (module, sorted(imported))
