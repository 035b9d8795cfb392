"""CLI options (issue 12, item 7): `--version`, exit codes and examples in `--help`, and
`MOESIF_BACKFILL_<OPTION>` environment variables for every option that configures a run."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tomllib
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest

from moesif_backfill import cli
from moesif_backfill.cli_days import DAY_OPTIONS, days_settings
from moesif_backfill.cli_flags import ENV_PREFIX, apply_env, env_var
from moesif_backfill.errors import ConfigError
from pipeline.settings import RunSettings
from tests.datasets import write_mapping, write_payments

ROOT = Path(__file__).resolve().parents[1]
# a minimal command line per command, for the namespace's env flags
MINIMAL = {
    "run": ["run", "x.csv"],
    "validate": ["validate", "x.csv"],
    "nightly": ["nightly", "x/{date}/"],
    "range": ["range", "x/{date}/", "--start", "2026-01-01", "--end", "2026-01-02"],
    "redrive": ["redrive", "s3://backup/errors/"],
}
ONE_SHOT = ("--reset", "--reprocess", "--dry-run")


@pytest.fixture(autouse=True)
def _no_inherited_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment of the test run holds no MOESIF_BACKFILL_<OPTION> of its own."""
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)


def _run_settings(argv: list[str], env: dict[str, str]) -> RunSettings:
    args = cli.build_parser().parse_args(argv)
    apply_env(args, env)
    return cli._settings(args)


def _help(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    with pytest.raises(SystemExit) as done:
        cli.main([*args, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def _env_vars(command: str) -> dict[str, str]:
    """{variable: option} of a command's env flags."""
    args = cli.build_parser().parse_args(MINIMAL[command])
    return {flag.var: flag.option for flag in args.env_flags}


# -- --version, --help --------------------------------------------------------------------------


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert capsys.readouterr().out.strip() == f"moesif-backfill {project}"


def test_help_lists_exit_codes_and_examples(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ((), ("run",), ("nightly",), ("range",), ("redrive",)):
        text = _help(capsys, *command)
        assert "exit codes:" in text, command
        codes = re.findall(r"^  (\d+) ", text.split("exit codes:")[1], flags=re.M)
        assert codes[:4] == ["0", "1", "2", "3"] and "130" in codes, codes
        assert "143" in text
        examples = text.split("examples:")[1].split("\n\n")[0]
        assert examples.count("moesif-backfill ") == 2, examples
        assert "MOESIF_BACKFILL_<OPTION>" in text
    assert "--dry-run --out" in _help(capsys, "run")


def test_exit_codes_in_help_are_the_codes_the_cli_uses() -> None:
    from moesif_backfill import errors

    assert (cli.EXIT_OK, cli.EXIT_FAILED, cli.EXIT_CONFIG, cli.EXIT_REJECTS) == (0, 1, 2, 3)
    assert errors.ConfigError.exit_code == 2 and errors.BackfillError.exit_code == 1


def test_help_is_fast_and_imports_nothing_heavy() -> None:
    code = (
        "import sys, time\n"
        "t = time.perf_counter()\n"
        "from moesif_backfill import cli\n"
        "try:\n    cli.main(['run', '--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'prefect', 'pyarrow', 'boto3'})\n"
        "print(__import__('json').dumps([time.perf_counter() - t, heavy]), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    seconds, heavy = json.loads(done.stderr.strip().splitlines()[-1])
    assert heavy == []
    assert seconds < 1.0  # about 0.1 s here; the margin is for a loaded test machine


# -- environment variables ----------------------------------------------------------------------


def test_every_run_option_has_a_variable_and_the_one_shot_ones_none() -> None:
    run = _env_vars("run")
    assert run["MOESIF_BACKFILL_CHUNK_ROWS"] == "--chunk-rows"
    assert run["MOESIF_BACKFILL_STREAM"] == "--stream"
    assert run["MOESIF_BACKFILL_MAPPING"] == "--mapping"
    for option in ONE_SHOT:
        assert option not in run.values()
    # every run flag made from a RunSettings field, but the one-shot ones, has its variable
    options = _help_options("run")
    for name in RunSettings.model_fields:
        option = "--" + name.replace("_", "-")
        if option in options and option not in ONE_SHOT:
            assert env_var(option) in run, option
    for command in ("nightly", "range"):
        days = _env_vars(command)
        assert {"MOESIF_BACKFILL_JOB", "MOESIF_BACKFILL_STREAM", "MOESIF_BACKFILL_TIMEZONE"} <= set(
            days
        )
        assert "MOESIF_BACKFILL_CHUNK_ROWS" in days and "MOESIF_BACKFILL_RESET" not in days
    assert "MOESIF_BACKFILL_MAX_CATCH_UP_DAYS" in _env_vars("nightly")
    assert "MOESIF_BACKFILL_CONCURRENCY" in _env_vars("range")


def _help_options(command: str) -> set[str]:
    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(SystemExit):
        cli.build_parser().parse_args([command, "--help"])
    return set(re.findall(r"--[a-z0-9-]+", out.getvalue()))


def test_variables_configure_a_run_and_the_command_line_wins() -> None:
    env = {
        "MOESIF_BACKFILL_MAPPING": "m.yaml",
        "MOESIF_BACKFILL_STREAM": "s1",
        "MOESIF_BACKFILL_CHUNK_ROWS": "500",
        "MOESIF_BACKFILL_MAX_IN_FLIGHT": "3",
        "MOESIF_BACKFILL_CHECKPOINT": "s3://state/ckpt/",
        "MOESIF_BACKFILL_LEASE_SECONDS": "30.5",
    }
    settings = _run_settings(["run", "x.csv"], env)
    assert settings.mapping == Path("m.yaml") and settings.streams == ["s1"]
    assert (settings.chunk_rows, settings.max_in_flight) == (500, 3)
    assert settings.checkpoint == "s3://state/ckpt/" and settings.lease_seconds == 30.5
    given = ["run", "x.csv", "--chunk-rows", "7", "--stream", "s2", "--mapping", "n.yaml"]
    settings = _run_settings(given, env)
    assert settings.chunk_rows == 7 and settings.streams == ["s2"]
    assert settings.mapping == Path("n.yaml") and settings.max_in_flight == 3
    # --dry-run (one of --stream / --dry-run) makes the stream variable not apply
    dry = _run_settings(["run", "x.csv", "--dry-run", "--out", "o"], env)
    assert dry.mode == "dry-run" and dry.streams == []


def test_lists_are_comma_separated_and_booleans_take_the_usual_words() -> None:
    base = {"MOESIF_BACKFILL_MAPPING": "m.yaml"}
    streams = {**base, "MOESIF_BACKFILL_STREAM": " a, b ,,c "}
    assert _run_settings(["run", "x.csv"], streams).streams == ["a", "b", "c"]
    assert _run_settings(["run", "x.csv", "--stream", "z"], streams).streams == ["z"]
    for word, value in [("true", True), ("1", True), ("yes", True), ("NO", False), ("0", False)]:
        env = {**base, "MOESIF_BACKFILL_STREAM": "s", "MOESIF_BACKFILL_ADAPTIVE_RATE": word}
        assert _run_settings(["run", "x.csv"], env).adaptive_rate is value, word
        env["MOESIF_BACKFILL_ALLOW_OLDER_THAN_30_DAYS"] = word
        assert _run_settings(["run", "x.csv"], env).allow_older_than_30_days is value
    # the command line wins over a boolean variable too
    env = {**base, "MOESIF_BACKFILL_STREAM": "s", "MOESIF_BACKFILL_ADAPTIVE_RATE": "false"}
    assert _run_settings(["run", "x.csv", "--adaptive-rate"], env).adaptive_rate is True
    # empty counts as unset
    assert _run_settings(["run", "x.csv"], {**env, "MOESIF_BACKFILL_CHUNK_ROWS": ""}).chunk_rows


def test_one_shot_options_are_never_read_from_the_environment() -> None:
    env = {
        "MOESIF_BACKFILL_MAPPING": "m.yaml",
        "MOESIF_BACKFILL_STREAM": "s",
        "MOESIF_BACKFILL_RESET": "true",
        "MOESIF_BACKFILL_REPROCESS": "x.csv",
        "MOESIF_BACKFILL_DRY_RUN": "true",
    }
    settings = _run_settings(["run", "x.csv"], env)
    assert settings.reset is False and settings.reprocess == [] and settings.mode == "send"


@pytest.mark.parametrize(
    ("var", "value", "why"),
    [
        ("MOESIF_BACKFILL_CHUNK_ROWS", "ten", "valid integer"),
        ("MOESIF_BACKFILL_CHUNK_ROWS", "0", "greater than or equal to 1"),
        ("MOESIF_BACKFILL_ALLOW_OLDER_THAN_30_DAYS", "maybe", "valid boolean"),
        ("MOESIF_BACKFILL_MAX_RECORDS_PER_SECOND", "-5", "greater than 0"),
    ],
)
def test_a_bad_value_is_an_error_naming_the_variable_exit_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    var: str,
    value: str,
    why: str,
) -> None:
    src = write_payments(tmp_path / "p.parquet", 1, 10)
    mapping = write_mapping(tmp_path / "m.yaml")
    monkeypatch.setenv(var, value)
    code = cli.main(["validate", str(src), "--mapping", str(mapping)])
    err = capsys.readouterr().err
    assert code == 2
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert var in line and repr(value) in line and why in line, err
    assert "Traceback" not in err


def test_a_required_option_may_come_from_its_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_payments(tmp_path / "p.parquet", 1, 10)
    assert cli.main(["validate", str(src)]) == 2
    err = capsys.readouterr().err
    assert "give --mapping (or set the environment variable MOESIF_BACKFILL_MAPPING)" in err
    monkeypatch.setenv("MOESIF_BACKFILL_MAPPING", str(write_mapping(tmp_path / "m.yaml")))
    assert cli.main(["validate", str(src)]) == 0, capsys.readouterr().err
    assert "mapping OK" in capsys.readouterr().out
    # run without --stream or its variable: the model's message, exit 2
    assert cli.main(["run", str(src)]) == 2
    err = capsys.readouterr().err
    assert "give --stream NAME to send through Firehose, --sink moesif" in err
    assert "or --dry-run --out DIR" in err


def test_dry_run_configured_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_payments(tmp_path / "p.parquet", 1, 1_200)
    monkeypatch.setenv("MOESIF_BACKFILL_MAPPING", str(write_mapping(tmp_path / "m.yaml")))
    monkeypatch.setenv("MOESIF_BACKFILL_CHECKPOINT", str(tmp_path / "ckpt"))
    monkeypatch.setenv("MOESIF_BACKFILL_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("MOESIF_BACKFILL_CHUNK_ROWS", "500")
    monkeypatch.setenv("MOESIF_BACKFILL_SUMMARY_JSON", str(tmp_path / "summary.json"))
    monkeypatch.setenv("MOESIF_BACKFILL_STREAM", "not-used-by-a-dry-run")
    assert cli.main(["run", str(src), "--dry-run", "--quiet"]) == 0, capsys.readouterr().err
    summary: dict[str, Any] = json.loads((tmp_path / "summary.json").read_text())
    assert summary["rows_read"] == 1_200
    assert any((tmp_path / "out").iterdir())


def test_nightly_and_range_read_their_options_from_the_environment() -> None:
    env = {
        "MOESIF_BACKFILL_MAPPING": "m.yaml",
        "MOESIF_BACKFILL_JOB": "usage",
        "MOESIF_BACKFILL_STREAM": "a,b",
        "MOESIF_BACKFILL_TIMEZONE": "Europe/Berlin",
        "MOESIF_BACKFILL_WINDOW": "time",
        "MOESIF_BACKFILL_CHUNK_ROWS": "900",
        "MOESIF_BACKFILL_MAX_CATCH_UP_DAYS": "3",
        "MOESIF_BACKFILL_CONCURRENCY": "5",
        "MOESIF_BACKFILL_RESET": "true",
    }
    args = cli.build_parser().parse_args([*MINIMAL["nightly"], "--job", "cli-job"])
    apply_env(args, env)
    nightly = days_settings(args)
    assert (nightly.job, nightly.streams, nightly.timezone) == (
        "cli-job",
        ["a", "b"],
        "Europe/Berlin",
    )
    assert nightly.window == "time" and nightly.options == {"chunk_rows": 900}
    assert nightly.max_catch_up_days == 3  # type: ignore[union-attr]
    args = cli.build_parser().parse_args(MINIMAL["range"])
    apply_env(args, env)
    days = days_settings(args)
    assert days.concurrency == 5 and "reset" not in days.options  # type: ignore[union-attr]
    args = cli.build_parser().parse_args(MINIMAL["range"])
    with pytest.raises(ConfigError, match="MOESIF_BACKFILL_WINDOW='day'"):
        apply_env(args, {**env, "MOESIF_BACKFILL_WINDOW": "day"})


def test_readme_lists_every_variable() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for command in MINIMAL:
        for var, option in _env_vars(command).items():
            assert f"`{var}`" in readme, f"README: {var} ({option}, {command}) missing"
    listed = set(re.findall(r"`(MOESIF_BACKFILL_[A-Z0-9_]+)`", readme))
    known = {v for c in MINIMAL for v in _env_vars(c)}
    known |= {env_var("--" + n.replace("_", "-")) for n in DAY_OPTIONS}  # by settings version
    others = {
        "MOESIF_BACKFILL_HOME",
        "MOESIF_BACKFILL_SOURCE_TEMPLATE",
        "MOESIF_BACKFILL_FAILED_DELIVERIES",  # deploy time only (deployments/prefect.yaml)
        "MOESIF_BACKFILL_FAILPOINTS",
    }
    assert listed <= known | others, listed - known - others
