"""The runtime packages import each other without cycles, and the modules that read sources
stay small (issue 11: module <= 400 lines, no import cycles)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = ("connectors", "transforms", "pipeline", "flows", "moesif_backfill")
# The source-reading connectors (split from storage.py, sources.py, readers.py, ndjson.py).
SOURCE_MODULES = (
    "columns",
    "csv_dialect",
    "csv_errors",
    "csv_reader",
    "discovery",
    "file_access",
    "formats",
    "layouts",
    "local_files",
    "manifest",
    "ndjson",
    "ndjson_values",
    "partitions",
    "readers",
    "s3_errors",
    "s3_listing",
    "s3_object",
    "s3_store",
    "schema_drift",
    "source_file",
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.Module, modules: set[str]) -> set[str]:
    """Runtime modules imported at import time (module level, outside TYPE_CHECKING)."""
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and not _is_type_checking(node):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name in modules)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module in modules:
                    found.add(node.module)
                for alias in node.names:
                    if f"{node.module}.{alias.name}" in modules:
                        found.add(f"{node.module}.{alias.name}")

    visit(tree.body)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for pkg in RUNTIME for p in (ROOT / pkg).rglob("*.py")}
    modules = set(files)
    return {
        name: _imports(ast.parse(path.read_text(), str(path)), modules) - {name}
        for name, path in files.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := dfs(node)):
            return cycle
    return None


def test_runtime_packages_have_no_import_cycle() -> None:
    graph = import_graph()
    assert "connectors.s3_store" in graph and "connectors.discovery" in graph
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_source_modules_are_small() -> None:
    sizes = {
        name: len((ROOT / "connectors" / f"{name}.py").read_text().splitlines())
        for name in SOURCE_MODULES
    }
    assert all(n <= 400 for n in sizes.values()), sizes
    assert not (ROOT / "connectors" / "storage.py").exists()
    assert not (ROOT / "connectors" / "sources.py").exists()
