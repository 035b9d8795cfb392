"""Direct or Prefect: how a CLI command runs (README "Direct or Prefect").

* `validate` and `run --dry-run` always run the core directly, in this process, without
  importing Prefect.
* `run`, `nightly` and `range` run directly too, unless a Prefect API is configured: then they
  run as Prefect flow runs (visible in the UI, same CLI output). Configured means
  PREFECT_API_URL in the environment, or in the active Prefect profile (PREFECT_PROFILE, else
  the `active` key of $PREFECT_PROFILES_PATH, default $PREFECT_HOME/profiles.toml, default
  ~/.prefect/profiles.toml). The profile file is read here with tomllib, without Prefect.
* `--no-prefect` forces direct mode; `--prefect` demands Prefect mode and is an error (exit 2)
  when no API is configured: this tool never starts a temporary Prefect server.
* A configured API that does not answer is an error (exit 2) before anything is sent.

Nothing here imports Prefect.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from moesif_backfill.errors import ConfigError

HEALTH_TIMEOUT_S = 5.0

MODES_HELP = """\
modes:
  validate and run --dry-run always run directly, in this process, without Prefect.
  run, nightly and range run directly too, unless a Prefect API is configured
  (PREFECT_API_URL in the environment, or in the active Prefect profile,
  $PREFECT_HOME/profiles.toml): then they run as Prefect flow runs, shown in the
  Prefect UI, with the same output here. --no-prefect forces direct mode;
  --prefect requires a configured API (exit 2 without one: no temporary server is
  started). An unreachable API is an error (exit 2) before anything is sent.
  The last line of the output says which mode a command used."""


@dataclass(frozen=True)
class PrefectApi:
    url: str
    origin: str  # where it was configured, for messages


@dataclass(frozen=True)
class Mode:
    """How a command runs: directly (api None), or as Prefect flow runs on `api`."""

    api: PrefectApi | None = None

    @property
    def prefect(self) -> bool:
        return self.api is not None


DIRECT = Mode()


def direct_label() -> str:
    return "(ran directly, without Prefect)"


def flow_run_label(name: str, run_id: str) -> str:
    return f"(as Prefect flow run {name!r}, id {run_id})"


def profiles_path(env: Mapping[str, str]) -> Path:
    explicit = env.get("PREFECT_PROFILES_PATH")
    if explicit:
        return Path(explicit).expanduser()
    home = env.get("PREFECT_HOME") or "~/.prefect"
    return Path(home).expanduser() / "profiles.toml"


def configured_api(env: Mapping[str, str] | None = None) -> PrefectApi | None:
    """The Prefect API this process would use, without importing Prefect: PREFECT_API_URL in
    the environment (an empty value means none), else the active profile's."""
    import tomllib  # noqa: PLC0415 - only when a command chooses its mode

    env = os.environ if env is None else env
    if "PREFECT_API_URL" in env:
        url = env["PREFECT_API_URL"].strip()
        return PrefectApi(url, "PREFECT_API_URL in the environment") if url else None
    path = profiles_path(env)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read the Prefect profiles file {path}: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"the Prefect profiles file {path} is not valid TOML ({exc}); fix it, or set "
            "PREFECT_API_URL (or PREFECT_PROFILES_PATH) explicitly"
        ) from None
    name = env.get("PREFECT_PROFILE") or str(data.get("active") or "ephemeral")
    profile = (data.get("profiles") or {}).get(name) or {}
    url = str(profile.get("PREFECT_API_URL") or "").strip()
    return PrefectApi(url, f"profile {name!r} in {path}") if url else None


def check_reachable(api: PrefectApi) -> None:
    """ConfigError (exit 2) unless the API answers its health check."""
    import urllib.error  # noqa: PLC0415 - only in Prefect mode
    import urllib.request  # noqa: PLC0415

    health = api.url.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(health, timeout=HEALTH_TIMEOUT_S):
            return
    except urllib.error.HTTPError as exc:
        if exc.code < 500:
            return  # it answers (e.g. 401 without an API key): reachable
        reason = f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = str(getattr(exc, "reason", exc))
    raise ConfigError(
        f"the Prefect API at {api.url} ({api.origin}) does not answer ({reason}); nothing was "
        "sent. Start it (prefect server start), point PREFECT_API_URL at a running one, or "
        "run without Prefect: --no-prefect"
    )


def choose_mode(
    *, prefect: bool | None, always_direct: str | None = None, env: Mapping[str, str] | None = None
) -> Mode:
    """The mode of a command. `prefect`: the --prefect (True) / --no-prefect (False) flag, or
    None; `always_direct`: why this command never uses Prefect (validate, --dry-run)."""
    if always_direct is not None:
        if prefect:
            raise ConfigError(f"--prefect: {always_direct} always runs directly, without Prefect")
        return DIRECT
    if prefect is False:
        return DIRECT
    api = configured_api(env)
    if api is None:
        if prefect:
            raise ConfigError(
                "--prefect needs a Prefect API: set PREFECT_API_URL (e.g. "
                "http://127.0.0.1:4200/api, after `prefect server start`), or select a Prefect "
                "profile that sets it (prefect profile use NAME); this tool does not start a "
                "temporary server. Without --prefect the command runs directly"
            )
        return DIRECT
    check_reachable(api)
    return Mode(api)


__all__ = [
    "DIRECT",
    "MODES_HELP",
    "Mode",
    "PrefectApi",
    "check_reachable",
    "choose_mode",
    "configured_api",
    "direct_label",
    "flow_run_label",
    "profiles_path",
]
