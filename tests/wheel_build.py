"""Build the project's wheel the way a release (or the image's build stage) does: shared by
tests/test_packaging.py and tests/test_container.py.

The wheel is built by pip from a fresh ``git clone`` of the committed HEAD (uncommitted files can
neither hide nor add anything: commit before running these tests), offline:
``--no-build-isolation`` with the build backend that the dev extras install
(``pip install -e '.[dev]'``), no index. Needs git; skips, saying so, where there is no git or
no git checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def run_checked(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run `cmd`, capture its output; a failing test naming the command when it exits != 0."""
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
    assert done.returncode == 0, f"{cmd} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def git_or_skip() -> str:
    """The git executable; skips the test where there is no git or no commit to clone."""
    git = shutil.which("git")
    if git is None:
        pytest.skip("needs git: the wheel is built from a fresh clone of the committed HEAD")
    inside = subprocess.run(
        [git, "-C", str(ROOT), "rev-parse", "--verify", "HEAD"], capture_output=True, check=False
    )
    if inside.returncode != 0:
        pytest.skip(f"needs a git checkout with a commit: {ROOT} is not one")
    return git


def missing_build_backend() -> list[str]:
    """Requirements of [build-system] that this interpreter does not satisfy."""
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    missing = []
    for text in requires:
        req = Requirement(text)
        try:
            have = version(req.name)
        except PackageNotFoundError:
            missing.append(text)
            continue
        if not req.specifier.contains(have, prereleases=True):
            missing.append(f"{text} (installed: {have})")
    return missing


def offline_pip_env() -> dict[str, str]:
    """The environment for pip runs that must not touch an index."""
    return {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def build_wheel(tmp: Path) -> Path:
    """The wheel of the committed HEAD, built under `tmp` (see the module docstring)."""
    git = git_or_skip()
    missing = missing_build_backend()
    if missing:
        pytest.fail(
            f"the build backend is missing ({', '.join(missing)}): "
            "run `pip install -e '.[dev]'` (or `make install`)"
        )
    head = run_checked([git, "-C", str(ROOT), "rev-parse", "HEAD"]).stdout.strip()
    clone, out = tmp / "clone", tmp / "out"
    run_checked([git, "clone", "--quiet", "--no-checkout", str(ROOT), str(clone)])
    run_checked([git, "-C", str(clone), "checkout", "--quiet", "--detach", head])
    run_checked(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(clone),
        ],
        cwd=tmp,
        env=offline_pip_env(),
        timeout=300,
    )
    (built,) = out.glob("*.whl")
    return built
