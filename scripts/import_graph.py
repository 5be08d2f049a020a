"""The package's shape at the level of its rooms: how many there are and which imports one from another.

A room is a top-level module or subpackage of `hf_seqobj` (`hf_seqobj/x.py`, or the package `hf_seqobj/x/` with
everything below it), and each script of `scripts/` is a room of its own (`scripts/x.py`); `hf_seqobj/__init__.py`
is the room `hf_seqobj`. Every `.py` file under `hf_seqobj/` and `scripts/` is parsed (tests are not counted), and
each import of an `hf_seqobj` module, at module level or inside a function (imports under `if TYPE_CHECKING:` never
run and are left out), is an edge from the importing file's room to the imported module's room; an import inside a
room is no edge. The counts are the rooms and the distinct directed edges between them.

    python scripts/import_graph.py             # the counts
    python scripts/import_graph.py --edges     # and every edge, "a -> b"
    python scripts/import_graph.py --mermaid   # a mermaid flowchart of the rooms (for a docs page)
    python scripts/import_graph.py --dot       # the same graph for Graphviz
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "hf_seqobj"


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _package_of(path: Path, root: Path) -> list[str]:
    """The dotted name, as parts, of the package that a file's relative imports start from."""
    return list(path.relative_to(root).with_suffix("").parts[:-1])


def _is_module(name: str, root: Path) -> bool:
    path = root.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """The `hf_seqobj` modules (dotted names) that a file imports, function-level imports included.

    `from a import b` imports the module `a.b` where that is a module, else `a` (b is a name defined in `a`).
    """
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                module = child.module or ""
                if child.level:  # relative: resolved against the file's own package
                    package = _package_of(path, root)
                    module = ".".join([*package[: len(package) - child.level + 1], *([module] if module else [])])
                for alias in child.names:
                    full = f"{module}.{alias.name}"
                    found.add(full if _is_module(full, root) else module)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return {name for name in found if name == PACKAGE or name.startswith(PACKAGE + ".")}


def room_of_module(name: str) -> str:
    """The room of an imported module (dotted name)."""
    parts = name.split(".")
    return PACKAGE if len(parts) == 1 else f"{PACKAGE}.{parts[1]}"


def room_of_file(path: Path, root: Path = ROOT) -> str:
    """The room a file belongs to."""
    parts = path.relative_to(root).with_suffix("").parts
    if parts[0] == "scripts":
        return "scripts." + parts[-1]
    if len(parts) == 2 and parts[1] == "__init__":
        return PACKAGE
    return f"{PACKAGE}.{parts[1]}"


def files(root: Path = ROOT) -> list[Path]:
    """Every `.py` file counted: under `hf_seqobj/` and `scripts/`."""
    return sorted([*(root / PACKAGE).rglob("*.py"), *(root / "scripts").rglob("*.py")])


def room_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Room -> the rooms it imports (every room a key, even one that imports nothing)."""
    graph: dict[str, set[str]] = {}
    for path in files(root):
        room = room_of_file(path, root)
        targets = graph.setdefault(room, set())
        for name in imported_modules(path, root):
            target = room_of_module(name)
            if target != room:
                targets.add(target)
    return graph


def _short(room: str) -> str:
    return room.removeprefix(PACKAGE + ".") if room != PACKAGE else PACKAGE


def mermaid(graph: dict[str, set[str]]) -> str:
    lines = ["flowchart LR"]
    ids = {room: room.replace(".", "_") for room in graph}
    for room in sorted(graph):
        lines.append(f'    {ids[room]}["{_short(room)}"]')
    for room in sorted(graph):
        for target in sorted(graph[room]):
            lines.append(f"    {ids[room]} --> {ids[target]}")
    return "\n".join(lines)


def dot(graph: dict[str, set[str]]) -> str:
    lines = ["digraph rooms {", "    rankdir=LR;"]
    for room in sorted(graph):
        lines.append(f'    "{_short(room)}";')
    for room in sorted(graph):
        for target in sorted(graph[room]):
            lines.append(f'    "{_short(room)}" -> "{_short(target)}";')
    lines.append("}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", action="store_true", help="list every edge, 'a -> b'")
    parser.add_argument("--mermaid", action="store_true", help="print a mermaid flowchart of the rooms")
    parser.add_argument("--dot", action="store_true", help="print a Graphviz graph of the rooms")
    args = parser.parse_args(argv)
    graph = room_graph()
    package_rooms = [room for room in graph if not room.startswith("scripts.")]
    edges = sorted((room, target) for room, targets in graph.items() for target in targets)
    package_edges = [edge for edge in edges if not edge[0].startswith("scripts.")]
    print(f"rooms: {len(graph)} ({len(package_rooms)} in {PACKAGE}, {len(graph) - len(package_rooms)} scripts)")
    from_scripts = len(edges) - len(package_edges)
    print(f"edges: {len(edges)} ({len(package_edges)} inside {PACKAGE}, {from_scripts} from scripts)")
    if args.edges:
        for room, target in edges:
            print(f"{_short(room)} -> {_short(target)}")
    if args.mermaid:
        print(mermaid(graph))
    if args.dot:
        print(dot(graph))


if __name__ == "__main__":
    main()
