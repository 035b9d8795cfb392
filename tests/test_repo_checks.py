"""Repository-level checks: the README's examples work, and ruff and mypy stay clean."""

from __future__ import annotations

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
