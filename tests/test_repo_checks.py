"""Repository-level checks: the README's examples work, ruff and mypy stay clean, the runtime
code uses only the public API of boto3 and botocore, has no import cycles and no module over
400 lines."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from transforms.mapping import parse_mapping

ROOT = Path(__file__).resolve().parents[1]


def _blocks(lang: str) -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def test_readme_mapping_example_is_a_valid_mapping() -> None:
    (block,) = _blocks("yaml")
    spec = parse_mapping(yaml.safe_load(block), origin="README.md")
    assert spec.transaction_id.key == ["invoice_line_id"]
    assert spec.metadata["pipeline"].model_dump() == {"value": "backfill"}
    assert spec.metadata["zip"].model_dump() == {"column": "zip", "type": "string"}


def test_readme_action_example_matches_the_bundled_sample() -> None:
    import json

    (block,) = _blocks("json")
    action = json.loads(block)
    assert list(action) == [
        "action_name",
        "request",
        "company_id",
        "user_id",
        "subscription_id",
        "transaction_id",
        "metadata",
    ]


def test_examples_mapping_is_valid() -> None:
    from transforms.mapping import load_mapping

    load_mapping(ROOT / "examples" / "mapping.yaml")


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"{name} is not installed in the test environment (pip install -e .[dev])")
    return found


@pytest.mark.parametrize(
    "args",
    [["ruff", "check", "."], ["ruff", "format", "--check", "."], ["mypy"]],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_static_checks_are_clean(args: list[str]) -> None:
    done = subprocess.run(
        [_tool(args[0]), *args[1:]], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


# -- boto3 / botocore: public API only ----------------------------------------------------------

RUNTIME_PACKAGES = ("connectors", "flows", "moesif_backfill", "pipeline", "transforms")
FOREIGN_PACKAGES = ("botocore", "boto3")
_PRIVATE_IN_SOURCE = re.compile(
    r"\bself\.(_[A-Za-z]\w*)|\bdef (_[A-Za-z]\w*)|^\s*(_[A-Za-z]\w*)\s*[:=]", re.M
)


def _private(name: str) -> bool:
    return name.startswith("_") and not name.endswith("__")


def _runtime_files() -> list[Path]:
    return sorted(p for pkg in RUNTIME_PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _foreign_private_names() -> set[str]:
    """Private attribute, method and module-level names that botocore and boto3 define."""
    import boto3
    import botocore

    names: set[str] = set()
    for module in (botocore, boto3):
        assert module.__file__ is not None
        for path in Path(module.__file__).parent.rglob("*.py"):
            for match in _PRIVATE_IN_SOURCE.finditer(path.read_text(encoding="utf-8")):
                names.add(next(g for g in match.groups() if g))
    return names


def _own_private_names(files: list[Path]) -> set[str]:
    """Private names our own code defines (functions, classes, attributes, module globals)."""
    names: set[str] = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return {n for n in names if _private(n)}


def foreign_private_uses(source: str, origin: str, foreign: set[str], own: set[str]) -> list[str]:
    """Where *source* reaches into botocore's or boto3's private parts.

    Flags: importing a private module or name of either package (``botocore._helpers``,
    ``from botocore.parsers import _x``); an attribute ``._name`` on anything but ``self`` /
    ``cls`` when botocore or boto3 define ``_name`` and our own code does not (so
    ``client._request_signer`` is flagged, ``run._make_sink`` or pyarrow's private names are
    not); ``getattr``/``hasattr``/``setattr`` with such a name; and any ``botocore._x`` /
    ``boto3._x``.
    """
    suspects = foreign - own
    found: list[str] = []

    def flag(node: ast.AST, what: str) -> None:
        found.append(f"{origin}:{getattr(node, 'lineno', '?')}: {what}")

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
            )
            for module in modules:
                parts = module.split(".")
                if parts[0] in FOREIGN_PACKAGES and any(_private(p) for p in parts):
                    flag(node, f"imports private module {module}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in (
                FOREIGN_PACKAGES
            ):
                for alias in node.names:
                    if _private(alias.name):
                        flag(node, f"imports private {node.module}.{alias.name}")
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in {"self", "cls"}:
                continue
            if node.attr in suspects or (
                isinstance(owner, ast.Name) and owner.id in FOREIGN_PACKAGES
            ):
                flag(node, f"uses private attribute {ast.unparse(node)}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in {"getattr", "hasattr", "setattr"}
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and node.args[1].value in suspects
        ):
            flag(node, f"uses private attribute {node.args[1].value!r} via {node.func.id}")
    return found


def test_runtime_code_uses_only_public_boto3_and_botocore() -> None:
    files = _runtime_files()
    foreign, own = _foreign_private_names(), _own_private_names(files)
    found = [
        hit
        for path in files
        for hit in foreign_private_uses(
            path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)), foreign, own
        )
    ]
    assert not found, "private botocore/boto3 parts in use:\n" + "\n".join(found)


def test_private_use_check_flags_the_private_and_only_the_private() -> None:
    foreign, own = _foreign_private_names(), _own_private_names(_runtime_files())
    private_uses = [
        "signer = client._request_signer",
        "http = client._endpoint.http_session",
        "emitter = client.meta.events._emitter",
        "handlers = emitter._handlers.prefix_search('x')",
        "ok = hasattr(client, '_request_signer')",
        "import botocore._helpers",
        "from botocore.parsers import _x",
        "from boto3._private import y",
        "v = botocore._helpers",
    ]
    for line in private_uses:
        assert foreign_private_uses(line, "snippet", foreign, own), line
    public_or_ours = [
        "self._client = client",
        "run._make_sink(plan, check_stream=False)",
        "pf._close_source = True",
        "client.meta.events.register('after-call.firehose.PutRecordBatch', f)",
        "from botocore.config import Config",
        "x = sender.__class__",
    ]
    for line in public_or_ours:
        assert not foreign_private_uses(line, "snippet", foreign, own), line


# -- layout: no import cycles, no long modules ---------------------------------------------------

MAX_MODULE_LINES = 400


def _module_names(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Dotted module name -> file, for every module of *packages* under *root*."""
    found: dict[str, Path] = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _import_nodes(tree: ast.Module) -> list[ast.stmt]:
    """Every statement of a module, also inside functions: a lazy (function-level) import only
    hides a cycle until the function runs (the issue named one, flows.backfill -> dask_run ->
    shard_task -> backfill, that was all function-level), so it counts. Also the typing-only
    ``if TYPE_CHECKING:`` blocks count: a cycle there is still a tangle."""
    out: list[ast.stmt] = []
    todo: list[ast.stmt] = list(tree.body)
    while todo:
        node = todo.pop()
        out.append(node)
        for name in ("body", "orelse", "finalbody"):
            todo.extend(getattr(node, name, []))
        for handler in getattr(node, "handlers", []):
            todo.extend(handler.body)
    return out


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Module -> the modules of *packages* it imports anywhere (see _import_nodes).

    ``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg``;
    relative imports are resolved against the importing module's package.
    """
    modules = _module_names(root, packages)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    targets.add(submodule if submodule in modules else base)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle, as its modules in import order with the first repeated at the end:
    one cycle per strongly connected component of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan's algorithm; the graphs are small
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component: list[str] = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [_cycle_through(graph, set(c), c[0]) for c in components]


def _cycle_through(graph: dict[str, set[str]], component: set[str], start: str) -> list[str]:
    """A shortest path start -> ... -> start inside one strongly connected component."""
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & component):
            if w == start:
                return [*paths[v], start]
            if w not in paths:
                paths[w] = [*paths[v], w]
                queue.append(w)
    raise AssertionError(f"{start} is not on a cycle")  # pragma: no cover


def long_modules(root: Path, packages: tuple[str, ...], limit: int) -> list[str]:
    """``path: N lines`` for every module of *packages* longer than *limit* lines."""
    return [
        f"{path.relative_to(root)}: {count} lines"
        for path in _module_names(root, packages).values()
        if (count := len(path.read_text(encoding="utf-8").splitlines())) > limit
    ]


def test_runtime_packages_have_no_import_cycles() -> None:
    cycles = import_cycles(import_graph(ROOT, RUNTIME_PACKAGES))
    assert not cycles, "import cycles (imports anywhere, also in functions):\n" + "\n".join(
        " -> ".join(cycle) for cycle in cycles
    )


def test_runtime_modules_are_at_most_400_lines() -> None:
    found = long_modules(ROOT, RUNTIME_PACKAGES, MAX_MODULE_LINES)
    assert not found, f"modules over {MAX_MODULE_LINES} lines (split them):\n" + "\n".join(found)


def test_transforms_import_nothing_from_connectors_flows_or_pipeline() -> None:
    """The layering is connectors -> transforms, never back (any import, also in a function)."""
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno}: imports {module}"
        for path in sorted((ROOT / "transforms").rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Import | ast.ImportFrom)
        for module in (
            [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        )
        if module.split(".")[0] in {"connectors", "flows", "pipeline"}
    ]
    assert not found, "\n".join(found)


def test_layout_checks_find_cycles_and_long_modules(tmp_path: Path) -> None:
    files = {
        "pa/__init__.py": "",
        "pa/a.py": "from pa import b\n",
        "pa/b.py": "import pa.c\n",
        "pa/c.py": "if True:\n    from .a import x\n",  # relative, nested in an if: counts
        "pa/d.py": "from pa.a import y\n" + "z = 1\n" * 5,  # imports into the cycle: not on it
        "pa/e.py": "def f():\n    from pa import d\n",  # function-level: an edge too
        "pb/__init__.py": "",
        "pb/x.py": "class K:\n    from pb import y\n",
        "pb/y.py": "from pb import x\nfrom pa import e\n",
        "pb/sub/__init__.py": "from .. import x\n",
        "other/q.py": "from pa import a\n" * 9,  # not a checked package
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    graph = import_graph(tmp_path, ("pa", "pb"))
    assert graph["pa.e"] == {"pa.d"}
    assert graph["pa.d"] == {"pa.a"}
    assert graph["pb.sub"] == {"pb.x"}
    assert import_cycles(graph) == [["pa.a", "pa.b", "pa.c", "pa.a"], ["pb.x", "pb.y", "pb.x"]]
    (tmp_path / "pa/c.py").write_text("def g():\n    from .a import x\n", encoding="utf-8")
    assert ["pa.a", "pa.b", "pa.c", "pa.a"] in import_cycles(import_graph(tmp_path, ("pa", "pb")))
    (tmp_path / "pa/c.py").write_text("def g():\n    return 1\n", encoding="utf-8")
    (tmp_path / "pb/x.py").write_text("", encoding="utf-8")
    assert import_cycles(import_graph(tmp_path, ("pa", "pb"))) == []

    assert long_modules(tmp_path, ("pa", "pb"), 5) == [f"{Path('pa/d.py')}: 6 lines"]
    assert long_modules(tmp_path, ("pa", "pb"), 6) == []
