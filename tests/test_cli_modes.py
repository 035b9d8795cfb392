"""Direct or Prefect (README "Direct or Prefect", moesif_backfill/modes.py), through real CLI
processes and the strict Firehose stand-in:

(a) no Prefect API configured: validate, run --dry-run and run work without importing Prefect
    (-X importtime) and without a Prefect database appearing in PREFECT_HOME;
(b) PREFECT_API_URL pointing at a real `prefect server start`: `run` is a flow run visible in the
    API, with its summary artifact, and Prefect's own log lines stay out of the output;
(c) --no-prefect with an API configured runs directly;
(d) the active profile's PREFECT_API_URL (profiles.toml) is honoured;
(e) an unreachable API, or --prefect without one: exit 2, nothing sent;
(f) failures print the same error and exit with the same code in both modes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from moesif_backfill import cli
from moesif_backfill.errors import ConfigError
from moesif_backfill.modes import PrefectApi, check_reachable, configured_api
from tests.datasets import MAPPING, expected_ids, write_mapping, write_payments
from tests.standins.prefect_server import PrefectServer, free_port

CLI = [sys.executable, "-X", "importtime", "-m", "moesif_backfill.cli"]
DIRECT = "(ran directly, without Prefect)"
FLOW_RUN = re.compile(r"\(as Prefect flow run '([^']+)', id ([0-9a-f-]{36})\)")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This process's environment with a fresh PREFECT_HOME and no Prefect API."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    home = tmp_path / f"prefect-home-{uuid.uuid4().hex[:6]}"
    home.mkdir()
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.update(extra)
    return env


def _cli(args: list[str], env: dict[str, str]) -> tuple[int, str, str, set[str]]:
    """Run the CLI; (exit code, stdout, stderr without the import-time lines, modules)."""
    done = subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    modules, err = set(), []
    for line in done.stderr.splitlines():
        if line.startswith("import time:"):
            modules.add(line.rsplit("|", 1)[-1].strip())
        else:
            err.append(line)
    return done.returncode, done.stdout, "\n".join(err), modules


def _prefect_loaded(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m == "prefect" or m.startswith("prefect."))


def _send_args(tmp_path: Path, src: Path, stream: str, server: Any, job: str) -> list[str]:
    return [
        "run",
        str(src),
        *("--mapping", str(tmp_path / "m.yaml"), "--stream", stream),
        *("--endpoint-url", server.endpoint_url, "--region", "us-east-1"),
        *("--checkpoint", str(tmp_path / f"ckpt-{job}"), "--job", job, "--chunk-rows", "500"),
        "--quiet",
    ]


# ------------------------------------------------------------------------------ fast, in-process


def test_configured_api_env_profile_and_precedence(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {"PREFECT_HOME": str(home)}
    assert configured_api(env) is None  # no profiles file
    (home / "profiles.toml").write_text(
        'active = "dev"\n'
        '[profiles.dev]\nPREFECT_API_URL = "http://127.0.0.1:4200/api"\n'
        '[profiles.ephemeral]\nPREFECT_SERVER_ALLOW_EPHEMERAL_MODE = "true"\n',
        encoding="utf-8",
    )
    api = configured_api(env)
    assert api is not None and api.url == "http://127.0.0.1:4200/api"
    assert "profile 'dev'" in api.origin and "profiles.toml" in api.origin
    assert configured_api({**env, "PREFECT_PROFILE": "ephemeral"}) is None
    from_env = configured_api({**env, "PREFECT_API_URL": "http://x:1/api"})
    assert from_env is not None and from_env.url == "http://x:1/api"
    assert configured_api({**env, "PREFECT_API_URL": ""}) is None  # empty: explicitly none
    (home / "profiles.toml").write_text("active = [", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        configured_api(env)
    unreachable = PrefectApi(f"http://127.0.0.1:{free_port()}/api", "a test")
    with pytest.raises(ConfigError, match=r"does not answer .*--no-prefect") as refused:
        check_reachable(unreachable)
    assert refused.value.exit_code == 2


def test_prefect_flag_without_an_api_and_with_validate_are_config_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    src = write_payments(tmp_path / "p.parquet", 1, 10)
    write_mapping(tmp_path / "m.yaml")
    args = ["run", str(src), "--mapping", str(tmp_path / "m.yaml"), "--stream", "s", "--prefect"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "--prefect needs a Prefect API: set PREFECT_API_URL" in err
    assert "does not start a temporary server" in err
    dry = ["run", str(src), "--mapping", str(tmp_path / "m.yaml"), "--dry-run", "--prefect"]
    assert cli.main([*dry, "--out", str(tmp_path / "out")]) == 2
    assert "run --dry-run always runs directly" in capsys.readouterr().err


def test_help_names_the_modes_and_flag_defaults_come_from_the_models(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pipeline.settings import RunSettings

    def help_of(*args: str) -> str:
        with pytest.raises(SystemExit):
            cli.main([*args, "--help"])
        return " ".join(capsys.readouterr().out.split())  # unwrapped

    text = help_of()
    assert "modes:" in text and "--no-prefect" in text and "PREFECT_API_URL" in text
    run_help = help_of("run")
    checkpoint = RunSettings.model_fields["checkpoint"].default
    assert f"(default {checkpoint})" in run_help.replace("- ", "-")
    assert "(default 10000)" in run_help and "--prefect" in run_help and "modes:" in run_help
    assert "(default 7)" in help_of("nightly") and "(default 2)" in help_of("range")


# ------------------------------------------------------------------------------ (a) no API


@pytest.mark.e2e
def test_without_an_api_nothing_of_prefect_is_loaded_or_started(
    tmp_path: Path, strict_firehose: Any, firehose_stream: str
) -> None:
    src = write_payments(tmp_path / "p.parquet", 1, 2_000)
    write_mapping(tmp_path / "m.yaml")
    env = _env(tmp_path)
    mapping = ["--mapping", str(tmp_path / "m.yaml")]

    code, out, err, modules = _cli(["validate", str(src), *mapping], env)
    assert code == 0, err
    assert "mapping OK" in out and out.rstrip().endswith(DIRECT)
    assert _prefect_loaded(modules) == []

    dry = ["run", str(src), *mapping, "--dry-run", "--out", str(tmp_path / "out"), "--quiet"]
    code, out, err, modules = _cli([*dry, "--checkpoint", str(tmp_path / "ck-dry")], env)
    assert code == 0, err
    assert err.rstrip().endswith(DIRECT) and "would be sent" in err
    assert _prefect_loaded(modules) == []

    code, out, err, modules = _cli(
        _send_args(tmp_path, src, firehose_stream, strict_firehose, "direct"), env
    )
    assert code == 0, err
    assert err.rstrip().endswith(DIRECT)
    assert _prefect_loaded(modules) == []
    assert set(strict_firehose.transaction_ids(firehose_stream)) == expected_ids(1, 2_000)
    # no temporary Prefect server ran: it would have left its database in PREFECT_HOME
    assert list(Path(env["PREFECT_HOME"]).iterdir()) == []


# ------------------------------------------------------------------------------ (b), (c), (d)


def _flow_run_and_artifacts(server: PrefectServer, run_id: str) -> tuple[Any, set[str]]:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with SyncPrefectClient(server.api_url) as client:
        (flow_run,) = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(run_id)]))
        )
        keys = {a.key for a in client.read_artifacts() if a.key and a.flow_run_id == flow_run.id}
    return flow_run, keys


def _flow_runs(server: PrefectServer) -> int:
    from prefect.client.orchestration import SyncPrefectClient

    with SyncPrefectClient(server.api_url) as client:
        return len(client.read_flow_runs())


@pytest.mark.e2e
def test_with_an_api_run_is_a_flow_run_and_no_prefect_runs_directly(
    tmp_path: Path, prefect_server: PrefectServer, strict_firehose: Any, firehose_stream: str
) -> None:
    src = write_payments(tmp_path / "p.parquet", 1, 1_500)
    write_mapping(tmp_path / "m.yaml")
    job = f"modes-{uuid.uuid4().hex[:6]}"
    env = _env(tmp_path, PREFECT_API_URL=prefect_server.api_url, PREFECT_LOGGING_LEVEL="INFO")

    code, _out, err, modules = _cli(
        _send_args(tmp_path, src, firehose_stream, strict_firehose, job), env
    )
    assert code == 0, err
    found = FLOW_RUN.search(err.splitlines()[-1])
    assert found, err
    assert "prefect" in modules
    # Prefect's narration ("Created flow run", "Finished in state") stays out of the output
    assert "Created flow run" not in err and "Finished in state" not in err
    assert f"job {job}: complete" in err
    flow_run, keys = _flow_run_and_artifacts(prefect_server, found.group(2))
    assert flow_run.name == found.group(1) and flow_run.state_type.value == "COMPLETED"
    # the settings are the run's parameters; the CLI's listener is only a placeholder
    assert flow_run.parameters["settings"]["job"] == job
    assert flow_run.parameters["listener"] == "<StoppableFollow>"
    assert {f"{job}-summary", f"{job}-progress"} <= keys
    assert set(strict_firehose.transaction_ids(firehose_stream)) == expected_ids(1, 1_500)

    # (c) --no-prefect: directly, no flow run, Prefect not even imported
    before = _flow_runs(prefect_server)
    args = _send_args(tmp_path, src, firehose_stream, strict_firehose, f"{job}-direct")
    code, _out, err, modules = _cli([*args, "--no-prefect"], env)
    assert code == 0, err
    assert err.rstrip().endswith(DIRECT) and _prefect_loaded(modules) == []
    assert _flow_runs(prefect_server) == before

    # (d) the API from the active profile of profiles.toml, PREFECT_API_URL unset
    profile_env = _env(tmp_path)
    Path(profile_env["PREFECT_HOME"], "profiles.toml").write_text(
        f'active = "ops"\n[profiles.ops]\nPREFECT_API_URL = "{prefect_server.api_url}"\n',
        encoding="utf-8",
    )
    args = _send_args(tmp_path, src, firehose_stream, strict_firehose, f"{job}-profile")
    code, _out, err, _modules = _cli(args, profile_env)
    assert code == 0, err
    found = FLOW_RUN.search(err.splitlines()[-1])
    assert found, err
    flow_run, keys = _flow_run_and_artifacts(prefect_server, found.group(2))
    assert f"{job}-profile-summary" in keys


# ------------------------------------------------------------------------------ (e), (f)


@pytest.mark.e2e
def test_unreachable_api_is_exit_2_before_anything_is_sent(
    tmp_path: Path, strict_firehose: Any, firehose_stream: str
) -> None:
    src = write_payments(tmp_path / "p.parquet", 1, 100)
    write_mapping(tmp_path / "m.yaml")
    url = f"http://127.0.0.1:{free_port()}/api"
    env = _env(tmp_path, PREFECT_API_URL=url)
    code, _out, err, _ = _cli(_send_args(tmp_path, src, firehose_stream, strict_firehose, "u"), env)
    assert code == 2
    assert f"the Prefect API at {url} (PREFECT_API_URL in the environment) does not answer" in err
    assert "--no-prefect" in err
    assert strict_firehose.transaction_ids(firehose_stream) == []
    assert not (tmp_path / "ckpt-u").exists()


def _comparable(text: str) -> list[str]:
    """Output lines that must not differ between modes (no mode line, no timings)."""
    skip = ("(ran directly", "(as Prefect flow run", "  duration", "  firehose calls")
    return [line for line in text.splitlines() if line and not line.startswith(skip)]


@pytest.mark.e2e
def test_failures_look_the_same_in_both_modes(
    tmp_path: Path, prefect_server: PrefectServer, strict_firehose: Any, firehose_stream: str
) -> None:
    src = write_payments(tmp_path / "p.parquet", 1, 300)
    direct_env = _env(tmp_path)
    prefect_env = _env(tmp_path, PREFECT_API_URL=prefect_server.api_url)
    cases = {
        # a mapping naming a column the data lacks: exit 2, nothing sent
        "mapping": (dict(MAPPING, company_id="no_such_column"), f"{firehose_stream}"),
        # a stream that does not exist: refused before sending
        "stream": (MAPPING, f"{firehose_stream}-missing"),
    }
    for name, (mapping, stream) in cases.items():
        write_mapping(tmp_path / "m.yaml", mapping)
        results = []
        for mode, env in (("direct", direct_env), ("prefect", prefect_env)):
            args = _send_args(tmp_path, src, stream, strict_firehose, f"{name}-x")
            args[args.index("--checkpoint") + 1] = str(tmp_path / f"ckpt-{name}-{mode}")
            code, out, err, _ = _cli(args, env)
            results.append((code, _comparable(out), _comparable(err), err))
        (d_code, d_out, d_err, d_raw), (p_code, p_out, p_err, p_raw) = results
        assert d_code == p_code and d_code != 0, (name, d_raw, p_raw)
        assert (d_out, d_err) == (p_out, p_err), (name, d_raw, p_raw)
        assert d_raw.rstrip().endswith(DIRECT) and FLOW_RUN.search(p_raw), (d_raw, p_raw)
    assert strict_firehose.transaction_ids(firehose_stream) == []
