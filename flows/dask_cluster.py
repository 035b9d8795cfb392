"""The Dask cluster of a run with --workers/--dask-address: settings checks, the task runner, and
what the driver asks of the cluster (workers joined, their versions, the Prefect API they use).

--workers N starts a local cluster of N worker processes (one thread each); --dask-address
connects to an existing scheduler. Each worker process runs Prefect's task engine and talks to
the driver's Prefect API (the driver's settings travel with every task). Without
PREFECT_API_URL, --workers N points its workers at the temporary server the driver started;
--dask-address needs a real Prefect server the workers can reach (ConfigError otherwise).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import distributed
from prefect.context import FlowRunContext
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect_dask.task_runners import DaskTaskRunner

import moesif_backfill
from moesif_backfill.errors import ConfigError
from pipeline.settings import RunSettings

log = logging.getLogger(__name__)

WORKER_WAIT_S = 60.0
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def check_cluster_settings(settings: RunSettings) -> None:
    """What can be refused before a cluster or a Prefect API is started."""
    if settings.mode != "send":
        raise ConfigError(
            "--workers/--dask-address apply to sending (--stream); --dry-run and validate run "
            "in one process: leave them out"
        )
    if settings.dask_address and not PREFECT_API_URL.value():
        raise ConfigError(
            "--dask-address needs a Prefect server that every Dask worker can reach (the "
            "temporary one a run starts without PREFECT_API_URL listens on 127.0.0.1 of this "
            "machine only): run `prefect server start --host 0.0.0.0` somewhere (or use Prefect "
            "Cloud) and export PREFECT_API_URL=http://HOST:4200/api before this command; the "
            "workers get the URL from this run. --workers N (a cluster on this machine) works "
            "without one."
        )


def task_runner(settings: RunSettings) -> DaskTaskRunner:
    if settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": settings.workers,
            "threads_per_worker": 1,
            "processes": True,
            "host": "127.0.0.1",
            # The scheduler's HTTP endpoint on a free port (8787 may be taken), no dashboard.
            "dashboard_address": ":0",
            "scheduler_kwargs": {"dashboard": False},
        }
    )


def dask_client() -> distributed.Client:
    """The Dask client of the flow run's DaskTaskRunner (connecting to the scheduler)."""
    ctx = FlowRunContext.get()
    runner = ctx.task_runner if ctx is not None else None
    if not isinstance(runner, DaskTaskRunner):
        raise RuntimeError("backfill_on_dask must run with a DaskTaskRunner (run_on_dask)")
    try:
        return runner.client
    except (OSError, TimeoutError) as exc:
        raise ConfigError(
            f"cannot reach the Dask scheduler at {runner.address}: {exc}; check the address "
            "(tcp://HOST:8786) and that `dask scheduler` runs there"
        ) from None


def threads(client: distributed.Client) -> int:
    """Worker threads the cluster has now."""
    return int(sum(client.nthreads().values()))  # type: ignore[no-untyped-call]


def first_done(client: distributed.Client, futures: list[Any]) -> list[Any]:
    """The finished ones of `futures` (distributed.Future), once at least one is."""
    with client.as_current():
        done, _ = distributed.wait(futures, return_when="FIRST_COMPLETED")  # type: ignore[no-untyped-call]
    return list(done)


def wait_for_workers(client: distributed.Client, settings: RunSettings) -> int:
    """Wait for a first worker (ConfigError after WORKER_WAIT_S); the worker threads then."""
    try:
        client.wait_for_workers(1, timeout=WORKER_WAIT_S)
    except (TimeoutError, OSError):
        raise ConfigError(
            f"no Dask worker joined the scheduler at {settings.dask_address or 'the local cluster'}"
            f" within {WORKER_WAIT_S:.0f} s: start `dask worker <scheduler address>` on each "
            "machine (with moesif-backfill installed), then rerun"
        ) from None
    return threads(client)


def worker_facts(checkpoint_dir: str | None) -> dict[str, Any]:
    """Run on every worker before the shards: its version, host, and whether it sees the
    (local) checkpoint directory."""
    return {
        "version": moesif_backfill.__version__,
        "host": socket.gethostname(),
        "sees_checkpoint": checkpoint_dir is None or os.path.isdir(checkpoint_dir),
    }


def check_workers(client: distributed.Client, settings: RunSettings, job: str) -> None:
    """Refuse workers that run another version, do not see the local checkpoint directory of
    `job`, or cannot reach the Prefect API (ConfigError)."""
    directory = None if settings.checkpoint_is_s3 else os.path.abspath(settings.checkpoint)
    job_dir = None if directory is None else os.path.join(directory, job)
    try:
        facts: dict[str, dict[str, Any]] = client.run(worker_facts, job_dir)
    except Exception as exc:
        raise ConfigError(
            f"a Dask worker cannot run moesif-backfill's tasks ({type(exc).__name__}: {exc}); "
            "install the same moesif-backfill version on every worker"
        ) from None
    for address, fact in facts.items():
        if fact["version"] != moesif_backfill.__version__:
            raise ConfigError(
                f"Dask worker {address} runs moesif-backfill {fact['version']}, this is "
                f"{moesif_backfill.__version__}: install the same version on every worker"
            )
        if not fact["sees_checkpoint"]:
            raise ConfigError(
                f"Dask worker {address} ({fact['host']}) does not see the checkpoint "
                f"directory {job_dir}: every worker writes its shards' checkpoints there. "
                "Use an s3:// checkpoint, or a directory shared by all machines at the same "
                "path."
            )
    api = PREFECT_API_URL.value()
    remote = [a for a in facts if _host(a) not in _LOOPBACK]
    if api and _host(str(api)) in _LOOPBACK and remote:
        raise ConfigError(
            f"PREFECT_API_URL is {api}, which Dask worker {remote[0]} on another machine "
            "cannot reach: give the Prefect server's address on the network"
        )


def _host(address: str) -> str:
    return urlsplit(address if "://" in address else f"tcp://{address}").hostname or ""


@contextlib.contextmanager
def api_for_workers() -> Iterator[None]:
    """Without PREFECT_API_URL this process runs a temporary Prefect server; the tasks (which
    carry this process's settings) are pointed at it, instead of each worker process starting
    its own. Only a local cluster can reach it (check_cluster_settings)."""
    if PREFECT_API_URL.value():
        yield
        return
    from prefect.client.orchestration import get_client  # noqa: PLC0415

    url = str(get_client(sync_client=True).api_url)
    log.info("workers use this run's temporary Prefect server at %s", url)
    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield


__all__ = [
    "api_for_workers",
    "check_cluster_settings",
    "check_workers",
    "dask_client",
    "first_done",
    "task_runner",
    "threads",
    "wait_for_workers",
    "worker_facts",
]
