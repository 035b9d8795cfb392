"""deployments/prefect.yaml end to end, the way an operator runs it (issue 4's acceptance test).

One real `prefect server start` (the session's `prefect_server`), the README's commands as
subprocesses (`prefect work-pool create`, `prefect deploy --all`, `prefect worker start`), one
process worker started outside the repository (the deployment's pull step must move each flow
run into the checkout named by MOESIF_BACKFILL_HOME), and the strict Firehose stand-in:

* the four deployments exist with the parameters templated from the deploying environment,
  nightly-sync has the cron schedule 0 2 * * * (UTC) and a concurrency limit of 1,
  redrive-failed-deliveries 0 4 * * * (UTC) and a concurrency limit of 1 (its schedule is
  paused right after deploying: no scheduled redrive runs on the test's worker);
* `nightly-sync` for day D delivers exactly D's actions; run again, nothing new; a late file in
  D's partition is delivered alone by the next run; a run scheduled at D+4 02:00 (no `date`:
  the day before its scheduled start, D+3) catches up D+1 and D+2 and delivers exactly the
  actions of D+1..D+3. Nothing is ever delivered twice.

The first tests only read prefect.yaml, deploy.env.example and the automation file (no server,
~3 s). The e2e part: about 160 s on 2 busy cores (server start ~40 s unless already up,
work-pool create ~10 s, deploy ~20 s, four nightly-sync flow runs of ~20-30 s each: every run is
a fresh Python process started by the worker).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.datasets import expected_ids, write_mapping, write_payments
from tests.standins.prefect_server import PrefectServer

ROOT = Path(__file__).resolve().parent.parent
PREFECT_FILE = "deployments/prefect.yaml"
POOL = "moesif-backfill"  # the work pool prefect.yaml names
PREFECT = [sys.executable, "-m", "prefect"]
RUN_TIMEOUT_S = 240.0
DEPLOY_ENV = {
    "MOESIF_BACKFILL_STREAM": "e2e-deployed-stream",
    "MOESIF_BACKFILL_MAPPING": "examples/mapping.yaml",
    "MOESIF_BACKFILL_CHECKPOINT": "s3://e2e-checkpoints/moesif/",
    "MOESIF_BACKFILL_SOURCE_TEMPLATE": "s3://e2e-exports/usage/dt={date:%Y-%m-%d}/",
    "MOESIF_BACKFILL_FAILED_DELIVERIES": "s3://e2e-failed-records/failed/errors/",
}
DEPLOYMENTS = (
    "moesif-backfill/backfill",
    "backfill-range/backfill-range",
    "nightly-sync/nightly-sync",
    "redrive-failed-deliveries/redrive-failed-deliveries",
)


# ---------------------------------------------------------------------------------------------
# the files themselves (fast)


def prefect_yaml() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / PREFECT_FILE).read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def env_placeholders(value: object) -> set[str]:
    return set(re.findall(r"{{\s*\$(\w+)\s*}}", json.dumps(value)))


def test_every_deploy_time_variable_is_checked_and_documented() -> None:
    spec = prefect_yaml()
    deploy_time = env_placeholders(spec["deployments"])
    assert deploy_time == set(DEPLOY_ENV), "DEPLOY_ENV must cover every {{ $VAR }} of prefect.yaml"
    (check,) = spec["build"]
    script = check["prefect.deployments.steps.run_shell_script"]["script"]
    assert set(re.findall(r"\$\{(\w+):\?", script)) == deploy_time
    example = (ROOT / "deployments" / "deploy.env.example").read_text(encoding="utf-8")
    assert set(re.findall(r"^(\w+)=", example, flags=re.MULTILINE)) == deploy_time
    assert env_placeholders(spec["pull"]) == {"MOESIF_BACKFILL_HOME"}


def test_entry_points_and_the_nightly_schedule_and_time_zone_agree() -> None:
    spec = prefect_yaml()
    by_name = {d["name"]: d for d in spec["deployments"]}
    assert set(by_name) == {
        "backfill",
        "backfill-range",
        "nightly-sync",
        "redrive-failed-deliveries",
    }
    for deployment in by_name.values():
        path, _, function = deployment["entrypoint"].partition(":")
        assert f"def {function}(" in (ROOT / path).read_text(encoding="utf-8")
    nightly = by_name["nightly-sync"]
    (schedule,) = nightly["schedules"]
    assert schedule["cron"] == "0 2 * * *"
    assert schedule["timezone"] == nightly["parameters"]["settings"]["timezone"] == "UTC"
    assert nightly["concurrency_limit"]["limit"] == 1
    assert "schedules" not in by_name["backfill"] and "schedules" not in by_name["backfill-range"]


def test_the_redrive_deployment_runs_daily_after_the_nightly_sync_with_valid_settings() -> None:
    """The entry point resolves to the flow; its parameters (deploy-time variables filled in as
    `prefect deploy` does) validate against the flow's signature, i.e. as RedriveSettings."""
    import importlib

    from pipeline.redrive_settings import RedriveSettings

    spec = prefect_yaml()
    (redrive,) = [d for d in spec["deployments"] if d["name"] == "redrive-failed-deliveries"]
    path, _, function = redrive["entrypoint"].partition(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    flow = getattr(module, function)
    assert flow.name == "redrive-failed-deliveries"
    (schedule,) = redrive["schedules"]
    assert (schedule["cron"], schedule["timezone"], schedule["active"]) == (
        "0 4 * * *",
        "UTC",
        True,
    )
    assert redrive["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
    text = json.dumps(redrive["parameters"])
    for name, value in DEPLOY_ENV.items():
        text = re.sub(r"{{\s*\$" + name + r"\s*}}", value, text)
    parameters = json.loads(text)
    validated = flow.validate_parameters(parameters)
    settings = validated["settings"]
    assert isinstance(settings, RedriveSettings)
    assert settings.location == DEPLOY_ENV["MOESIF_BACKFILL_FAILED_DELIVERIES"]
    assert settings.streams == [DEPLOY_ENV["MOESIF_BACKFILL_STREAM"]]
    assert str(settings.checkpoint) == DEPLOY_ENV["MOESIF_BACKFILL_CHECKPOINT"]
    assert (
        settings.delete_after is True
        and settings.mode == "send"
        and settings.job == "failed-deliveries"
    )


def test_failed_nightly_automation_is_a_valid_prefect_automation() -> None:
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import AutomationCore, EventTrigger

    path = ROOT / "deployments" / "automations" / "nightly-sync-failed.yaml"
    automation = AutomationCore.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    assert isinstance(automation.trigger, EventTrigger)
    assert {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"} <= automation.trigger.expect
    related = automation.trigger.match_related
    assert related is not None and not isinstance(related, list)
    assert related.root == {
        "prefect.resource.role": "deployment",
        "prefect.resource.name": "nightly-sync",
    }
    (action,) = automation.actions
    assert isinstance(action, SendNotification)


# ---------------------------------------------------------------------------------------------
# deployed on a real server


def client(server: PrefectServer) -> Any:
    """A client for `server` only: no global Prefect setting is touched, so the session's
    temporary API (`prefect_api`) other tests use stays as it is."""
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(server.api_url)


def run_cli(args: list[str], env: dict[str, str], timeout: float = 180) -> str:
    done = subprocess.run(
        [*PREFECT, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, n: int = 80) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        """SIGINT to the worker's process group (its graceful stop), SIGKILL if it lingers,
        then SIGKILL to whatever of its group (flow run processes) is left."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def deployed(
    prefect_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    """The pool created, a worker on it (started from outside the checkout), everything in
    prefect.yaml deployed. Yields the worker."""
    env = prefect_server.env()
    env.pop("MOESIF_BACKFILL_HOME", None)  # resolved by each flow run on the worker, not here
    run_cli(["work-pool", "create", POOL, "--type", "process", "--overwrite"], env)

    workdir = tmp_path_factory.mktemp("worker")
    log = workdir / "worker.log"
    worker_env = prefect_server.env()
    worker_env.update(MOESIF_BACKFILL_HOME=str(ROOT), PREFECT_LOGGING_LEVEL="INFO")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*PREFECT, "worker", "start", "--pool", POOL, "--limit", "1"],
            cwd=workdir,
            env=worker_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = Worker(proc, log)
    try:
        env.update(DEPLOY_ENV)
        run_cli(["--no-prompt", "deploy", "--all", "--prefect-file", PREFECT_FILE], env)
        with client(prefect_server) as c:  # no 04:00 redrive may start on the test's worker
            redrive = c.read_deployment_by_name(DEPLOYMENTS[-1])
            assert [s.active for s in redrive.schedules] == [True]
            stop_the_schedule(c, redrive)
        assert proc.poll() is None, f"the worker exited:\n{worker.log_tail()}"
        yield worker
    finally:
        worker.stop()


@pytest.mark.e2e
def test_deploy_creates_the_four_deployments(
    prefect_server: PrefectServer, deployed: Worker
) -> None:
    with client(prefect_server) as c:
        found = {name: c.read_deployment_by_name(name) for name in DEPLOYMENTS}
        for name, deployment in found.items():
            assert deployment.work_pool_name == POOL, name
            (pull,) = deployment.pull_steps
            # stored unresolved: each flow run resolves it from its worker's environment
            assert pull == {
                "prefect.deployments.steps.set_working_directory": {
                    "directory": "{{ $MOESIF_BACKFILL_HOME }}"
                }
            }

        backfill = found["moesif-backfill/backfill"]
        assert not backfill.schedules
        settings = backfill.parameters["settings"]
        assert settings["streams"] == [DEPLOY_ENV["MOESIF_BACKFILL_STREAM"]]
        assert settings["mapping"] == DEPLOY_ENV["MOESIF_BACKFILL_MAPPING"]
        assert settings["checkpoint"] == DEPLOY_ENV["MOESIF_BACKFILL_CHECKPOINT"]

        ranged = found["backfill-range/backfill-range"]
        assert not ranged.schedules
        assert ranged.parameters["settings"]["sources"] == [
            DEPLOY_ENV["MOESIF_BACKFILL_SOURCE_TEMPLATE"]
        ]

        nightly = found["nightly-sync/nightly-sync"]
        (schedule,) = nightly.schedules
        assert schedule.active
        assert schedule.schedule.cron == "0 2 * * *"
        assert schedule.schedule.timezone == "UTC"
        nightly_settings = nightly.parameters["settings"]
        assert nightly_settings["timezone"] == "UTC"
        assert nightly_settings["sources"] == [DEPLOY_ENV["MOESIF_BACKFILL_SOURCE_TEMPLATE"]]
        assert nightly_settings["streams"] == [DEPLOY_ENV["MOESIF_BACKFILL_STREAM"]]
        assert nightly.global_concurrency_limit is not None
        assert nightly.global_concurrency_limit.limit == 1
        assert nightly.concurrency_options is not None
        assert nightly.concurrency_options.collision_strategy == "ENQUEUE"

        redrive = found["redrive-failed-deliveries/redrive-failed-deliveries"]
        (schedule,) = redrive.schedules
        assert schedule.schedule.cron == "0 4 * * *"  # active when deployed, paused by `deployed`
        assert schedule.schedule.timezone == "UTC"
        assert (
            redrive.parameters["settings"]["location"]
            == (DEPLOY_ENV["MOESIF_BACKFILL_FAILED_DELIVERIES"])
        )
        assert redrive.global_concurrency_limit is not None
        assert redrive.global_concurrency_limit.limit == 1


# ---------------------------------------------------------------------------------------------
# nightly-sync through the worker


def stop_the_schedule(c: Any, deployment: Any) -> None:
    """No 02:00 run may start during the test (it would use the deployed defaults)."""
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    for schedule in deployment.schedules:
        c.update_deployment_schedule(deployment.id, schedule.id, active=False)
    scheduled = c.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
        ),
    )
    for run in scheduled:
        if run.auto_scheduled:
            c.delete_flow_run(run.id)


def run_nightly(
    c: Any,
    deployment: Any,
    worker: Worker,
    parameters: dict[str, Any],
    day: dt.date | None = None,
    scheduled: dt.datetime | None = None,
) -> Any:
    """One nightly-sync flow run through the worker, for `day`, or without a `date` and
    scheduled at `scheduled` (as the cron schedule would create it); its final state."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.states import Scheduled

    if day is not None:
        parameters = {**parameters, "date": day.isoformat()}
    run = c.create_flow_run_from_deployment(
        deployment.id,
        parameters=parameters,
        state=Scheduled(scheduled_time=scheduled) if scheduled is not None else None,
    )
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        run = c.read_flow_run(run.id)
        if run.state is not None and run.state.is_final():
            break
        if time.monotonic() > deadline or worker.proc.poll() is not None:
            break
        time.sleep(1.0)
    if run.state is None or not run.state.is_completed():
        logs = c.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
        print("---- worker log ----\n" + worker.log_tail())
        print("---- flow run log ----")
        for entry in logs:
            print(f"{entry.timestamp} {entry.level} {entry.message}")
        what = f"for {day}" if day is not None else f"scheduled at {scheduled}"
        pytest.fail(f"nightly-sync {what} ended in {run.state!r}, not Completed (logs above)")
    return run.state


@pytest.mark.e2e
def test_nightly_sync_delivers_each_day_once_late_files_and_missed_days(
    prefect_server: PrefectServer,
    deployed: Worker,
    strict_firehose: Any,
    firehose_stream: str,
    tmp_path: Path,
) -> None:
    data = tmp_path / "usage"
    day = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=6)

    def partition(d: dt.date) -> Path:
        return data / f"dt={d:%Y-%m-%d}"

    # day D: 300 rows in two files; D+1..D+3: 100 rows each (ID ranges disjoint)
    write_payments(partition(day) / "part-0.parquet", 0, 200)
    write_payments(partition(day) / "part-1.parquet", 200, 100)
    for k in (1, 2, 3):
        write_payments(partition(day + dt.timedelta(days=k)) / "part-0.parquet", k * 10_000, 100)
    settings = {  # a whole NightlySettings: a run's parameters replace the deployment's
        "sources": [str(data) + "/dt={date:%Y-%m-%d}/"],
        "mapping": str(write_mapping(tmp_path / "mapping.yaml")),
        "job": f"e2e-{uuid.uuid4().hex[:8]}",
        "streams": [firehose_stream],
        "checkpoint": str(tmp_path / "checkpoints"),
        "endpoint_url": strict_firehose.endpoint_url,
        "region": "us-east-1",
        "timezone": "UTC",
    }
    parameters = {"settings": settings}
    delivered: list[str] = []

    def new_ids() -> set[str]:
        ids = strict_firehose.transaction_ids(firehose_stream)
        fresh = ids[len(delivered) :]
        delivered.extend(fresh)
        assert not [i for i, n in Counter(delivered).items() if n > 1], "an action was sent twice"
        return set(fresh)

    with client(prefect_server) as c:
        nightly = c.read_deployment_by_name("nightly-sync/nightly-sync")
        stop_the_schedule(c, nightly)

        run_nightly(c, nightly, deployed, parameters, day)
        assert new_ids() == expected_ids(0, 300), "day D: exactly D's actions"

        run_nightly(c, nightly, deployed, parameters, day)
        assert new_ids() == set(), "day D again: nothing new"

        write_payments(partition(day) / "part-2-late.parquet", 500, 40)
        run_nightly(c, nightly, deployed, parameters, day)
        assert new_ids() == expected_ids(500, 40), "the late file of day D, alone"

        # no `date`: a run scheduled (in the past) for D+4 02:00 UTC, as the cron schedule
        # creates them, does the day before its scheduled start: D+3, after D+1 and D+2
        at = dt.datetime.combine(day + dt.timedelta(days=4), dt.time(2, 0), tzinfo=dt.UTC)
        run_nightly(c, nightly, deployed, parameters, scheduled=at)
        caught_up = expected_ids(10_000, 100) | expected_ids(20_000, 100)
        assert new_ids() == caught_up | expected_ids(30_000, 100), "D+1 and D+2 caught up, D+3"
