"""The Dask cluster of a run with --workers/--dask-address (plain `distributed`, no Prefect):
settings checks, the client, and what the driver asks of the cluster (workers joined, their
versions, whether they see the checkpoint).

--workers N starts a local cluster of N worker processes (one thread each); --dask-address
connects to an existing scheduler. The workers run plain functions (pipeline/shard_work.py);
they need moesif-backfill installed, and, only with --aws-credentials-block, a Prefect API to
load the block from (PREFECT_API_URL in their environment).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from typing import Any

import distributed

import moesif_backfill
from moesif_backfill.errors import ConfigError
from pipeline.settings import RunSettings

log = logging.getLogger(__name__)

WORKER_WAIT_S = 60.0
CONNECT_TIMEOUT_S = 20.0


def check_cluster_settings(settings: RunSettings) -> None:
    """What can be refused before a cluster is started or reached."""
    if settings.mode != "send":
        raise ConfigError(
            "--workers/--dask-address apply to sending (--stream); --dry-run and validate run "
            "in one process: leave them out"
        )


def quiet_dask_logs() -> None:
    """The cluster's chatter (workers joining, closing, heartbeats) only from WARNING up."""
    logging.getLogger("distributed").setLevel(logging.WARNING)


@contextlib.contextmanager
def dask_client(settings: RunSettings) -> Iterator[distributed.Client]:
    """A client of the scheduler at --dask-address, or of a local cluster of --workers N
    processes (started here, closed at the end)."""
    if settings.dask_address:
        try:
            client = distributed.Client(  # type: ignore[no-untyped-call]
                settings.dask_address, timeout=CONNECT_TIMEOUT_S
            )
        except (OSError, TimeoutError) as exc:
            raise ConfigError(
                f"cannot reach the Dask scheduler at {settings.dask_address}: {exc}; check the "
                "address (tcp://HOST:8786) and that `dask scheduler` runs there"
            ) from None
        try:
            yield client
        finally:
            client.close()  # type: ignore[no-untyped-call]
        return
    cluster = distributed.LocalCluster(  # type: ignore[no-untyped-call]
        n_workers=settings.workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        # The scheduler's HTTP endpoint on a free port (8787 may be taken), no dashboard.
        dashboard_address=":0",
        scheduler_kwargs={"dashboard": False},
    )
    try:
        client = distributed.Client(cluster)  # type: ignore[no-untyped-call]
        try:
            yield client
        finally:
            client.close()  # type: ignore[no-untyped-call]
    finally:
        cluster.close()


def threads(client: distributed.Client) -> int:
    """Worker threads the cluster has now."""
    return int(sum(client.nthreads().values()))  # type: ignore[no-untyped-call]


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
    """Refuse workers that run another version or do not see the local checkpoint directory
    of `job` (ConfigError)."""
    directory = None if settings.checkpoint_is_s3 else os.path.abspath(settings.checkpoint)
    job_dir = None if directory is None else os.path.join(directory, job)
    try:
        facts: dict[str, dict[str, Any]] = client.run(worker_facts, job_dir)
    except Exception as exc:
        raise ConfigError(
            f"a Dask worker cannot run moesif-backfill's shards ({type(exc).__name__}: {exc}); "
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


__all__ = [
    "check_cluster_settings",
    "check_workers",
    "dask_client",
    "quiet_dask_logs",
    "threads",
    "wait_for_workers",
    "worker_facts",
]
