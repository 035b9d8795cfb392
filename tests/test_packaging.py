"""The wheel holds the runtime only: no stand-in, no test file, nothing that imports moto.

The wheel is built from the committed HEAD, offline (tests/wheel_build.py: commit before running
this); skipped, saying so, where there is no git or no git checkout.
"""

from __future__ import annotations

import ast
import json
import os
import sys
import zipfile
from pathlib import Path, PurePosixPath

import pytest
from packaging.requirements import Requirement

from tests.wheel_build import build_wheel, run_checked

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_PACKAGES = {"moesif_backfill", "pipeline", "flows", "transforms", "connectors"}
DEV_ONLY = {"moto"}  # the stand-ins' dependency: never imported by the runtime

# Imports every runtime module named in argv[1] (from the unpacked wheel at argv[2] only) and
# reports which dev-only modules got loaded and which module came from somewhere else.
_IMPORT_ALL = """
import importlib, json, sys
names, root = json.loads(sys.argv[1]), sys.argv[2]
outside = []
for name in names:
    module = importlib.import_module(name)
    if not (module.__file__ or "").startswith(root):
        outside.append(f"{name}: {module.__file__}")
dev_only = set(json.loads(sys.argv[3]))
loaded = sorted(m for m in sys.modules if m.split(".")[0] in dev_only or m.split(".")[0] == "tests")
print(json.dumps({"loaded": loaded, "outside": outside}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def _names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


def _runtime_modules(names: list[str]) -> list[str]:
    modules = []
    for name in names:
        path = PurePosixPath(name)
        if path.suffix != ".py" or path.parts[0] not in RUNTIME_PACKAGES:
            continue
        parts = path.with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        modules.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(modules)


def test_wheel_holds_the_runtime_packages_and_nothing_else(wheel: Path) -> None:
    names = _names(wheel)
    assert not [n for n in names if "standins" in n.lower() or "stand_ins" in n.lower()]
    assert not [n for n in names if n.startswith("tests/") or "/tests/" in n]
    tops = {n.split("/")[0] for n in names}
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert len(dist_info) == 1
    assert tops - dist_info == RUNTIME_PACKAGES
    assert "moesif_backfill/cli.py" in names and "moesif_backfill/failpoints.py" in names
    assert "flows/backfill.py" in names and "connectors/firehose.py" in names


def test_no_module_in_the_wheel_imports_moto(wheel: Path) -> None:
    found = []
    with zipfile.ZipFile(wheel) as zf:
        sources = [n for n in zf.namelist() if n.endswith(".py")]
        assert len(sources) > 20  # the scan below has something to look at
        for name in sources:
            for node in ast.walk(ast.parse(zf.read(name), filename=name)):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    modules = [node.module or ""]
                else:
                    continue
                found += [
                    f"{name}:{node.lineno}: {m}" for m in modules if m.split(".")[0] in DEV_ONLY
                ]
        (metadata,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        requires = [
            line.split(":", 1)[1].strip()
            for line in zf.read(metadata).decode().splitlines()
            if line.startswith("Requires-Dist:")
        ]
    assert not found, "the wheel imports dev-only packages:\n" + "\n".join(found)
    for text in requires:
        req = Requirement(text)
        if req.name.lower() in DEV_ONLY:  # moto is a dev extra, never a runtime dependency
            assert req.marker is not None and 'extra == "dev"' in str(req.marker), text


def test_importing_every_runtime_module_loads_no_moto(wheel: Path, tmp_path: Path) -> None:
    unpacked, empty = tmp_path / "site", tmp_path / "cwd"
    empty.mkdir()
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(unpacked)
        modules = _runtime_modules(zf.namelist())
    assert {"moesif_backfill.cli", "flows.backfill", "connectors.firehose"} <= set(modules)
    assert {m.split(".")[0] for m in modules} == RUNTIME_PACKAGES
    env = {**os.environ, "PYTHONPATH": str(unpacked), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    done = run_checked(
        [
            sys.executable,
            "-c",
            _IMPORT_ALL,
            json.dumps(modules),
            str(unpacked),
            json.dumps(sorted(DEV_ONLY)),
        ],
        cwd=empty,  # neither the checkout nor the current directory on sys.path
        env=env,
        timeout=300,
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["outside"] == [], "imported from outside the wheel"
    assert report["loaded"] == [], "dev-only modules loaded by the runtime"
