"""Repository-level checks: the README's examples work, ruff and mypy stay clean, and the
runtime code uses only the public API of boto3 and botocore."""

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

RUNTIME_PACKAGES = ("connectors", "flows", "transforms", "moesif_backfill")
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
