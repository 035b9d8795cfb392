"""Where shards run: `LocalRunner` (threads of this process) or `DaskRunner` (a Dask cluster,
through a `distributed.Client`, no Prefect). Both run the same shard code
(pipeline/shard_work.py) against the same checkpoint layout, so a job may move between them.

A runner only starts shards and hands back their results; which shards run, retries and the
accounting are the scheduler's (pipeline/scheduler.py).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Protocol

from connectors.checkpoint import CheckpointStore
from connectors.s3_store import S3Store
from pipeline.engine import ProgressListener
from pipeline.plan import FilePlan
from pipeline.shard_work import ShardResult, ShardWork, run_remote, run_shard
from pipeline.sinks import Sink

SHARDS_PER_THREAD = 2  # Dask: submitted at once per worker thread, so the next one is queued


class Runner(Protocol):
    """Starts shards and hands back their results."""

    def slots(self) -> int:
        """How many shards may be submitted at once now."""
        ...

    def adapt(self, work: ShardWork) -> ShardWork:
        """The work as this runner's workers need it."""
        ...

    def submit(self, work: ShardWork) -> Any: ...

    def wait(self, handles: Sequence[Any], timeout: float | None) -> list[Any]:
        """The finished ones of `handles`, once at least one is (or the timeout passed)."""
        ...

    def result(self, handle: Any) -> ShardResult:
        """The shard's result, or the error it failed with (raised)."""
        ...

    def stop(self) -> None:
        """Running shards stop starting chunks (where the runner can tell them)."""
        ...


class LocalRunner:
    """Shards on `shards_in_flight` threads of this process, sharing the run's sink (its send
    limits and statistics are the run's), store and progress listener."""

    def __init__(
        self,
        *,
        store: CheckpointStore | None,
        session: Any,
        sink: Sink,
        progress: ProgressListener | None,
        plan_files: list[FilePlan],
        shards_in_flight: int = 1,
        s3: S3Store | None = None,
        rows_in_flight: int | None = None,
    ) -> None:
        self.store, self.session, self.sink, self.s3 = store, session, sink, s3
        # The scheduler starts another shard only while the running ones' rows fit in this.
        self.rows_in_flight = rows_in_flight
        self.progress, self.plan_files = progress, plan_files
        self.n = shards_in_flight
        self.stopping = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=self.n, thread_name_prefix="shard")

    def slots(self) -> int:
        return self.n

    def adapt(self, work: ShardWork) -> ShardWork:
        return work

    def submit(self, work: ShardWork) -> Future[ShardResult]:
        return self.pool.submit(
            run_shard,
            work,
            store=self.store,
            session=self.session,
            sink=self.sink,
            progress=self.progress,
            should_stop=self.stopping.is_set,
            plan_files=self.plan_files,
            s3=self.s3,
        )

    def wait(self, handles: Sequence[Any], timeout: float | None) -> list[Any]:
        done, _ = wait(handles, timeout=timeout, return_when=FIRST_COMPLETED)
        return list(done)

    def result(self, handle: Any) -> ShardResult:
        result: ShardResult = handle.result()
        return result

    def stop(self) -> None:
        self.stopping.set()

    def close(self) -> None:
        self.pool.shutdown(wait=True)


class DaskRunner:
    """Shards as plain functions on a Dask cluster: each worker opens its own AWS session,
    checkpoint store and sink; the run's send limits are divided among the worker threads."""

    def __init__(self, client: Any, threads: Callable[[], int]) -> None:
        self.client = client
        self.threads = threads

    def slots(self) -> int:
        return SHARDS_PER_THREAD * max(self.threads(), 1)

    def adapt(self, work: ShardWork) -> ShardWork:
        s = work.settings
        n = max(self.threads(), 1)
        update: dict[str, Any] = {
            "max_records_per_second": s.max_records_per_second / n
            if s.max_records_per_second
            else None,
            "max_mib_per_second": s.max_mib_per_second / n if s.max_mib_per_second else None,
        }
        if not s.checkpoint_is_s3:
            update["checkpoint"] = os.path.abspath(s.checkpoint)
        rejects = work.rejects.absolute() if work.rejects is not None else None
        return dataclasses.replace(work, settings=s.model_copy(update=update), rejects=rejects)

    def submit(self, work: ShardWork) -> Any:
        return self.client.submit(run_remote, work, pure=False)

    def wait(self, handles: Sequence[Any], timeout: float | None) -> list[Any]:
        import distributed  # noqa: PLC0415 - only runs with Dask installed and asked for

        try:
            with self.client.as_current():
                done, _ = distributed.wait(  # type: ignore[no-untyped-call]
                    list(handles), timeout=timeout, return_when="FIRST_COMPLETED"
                )
        except TimeoutError:
            return []
        return list(done)

    def result(self, handle: Any) -> ShardResult:
        result: ShardResult = handle.result()
        return result

    def stop(self) -> None:
        return None  # a running Dask task cannot be told; its shard runs to its end


__all__ = ["SHARDS_PER_THREAD", "DaskRunner", "LocalRunner", "Runner"]
