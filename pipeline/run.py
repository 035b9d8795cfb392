"""One run of a job, as plain Python: prepare (preflight, lock), process files, finish.

`flows.backfill` wires these steps into a Prefect flow; tests may call them directly.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any, Protocol

from connectors.checkpoint import CheckpointStore
from connectors.checkpoint_factory import make_checkpoint_store
from connectors.firehose import FirehoseSender, RetryPolicy
from connectors.firehose_client import make_firehose_client
from connectors.s3_errors import is_s3
from connectors.s3_store import S3Store
from moesif_backfill import PROCESS_T0
from moesif_backfill.errors import (
    BackfillError,
    ConfigError,
    PermanentDeliveryError,
    PreflightError,
)
from pipeline import shards
from pipeline.engine import Counts, FileRunner, ProgressListener
from pipeline.plan import Plan, default_job_name, make_plan
from pipeline.rejects import RejectsWriter
from pipeline.report import RunSummary, write_json_atomic
from pipeline.settings import DEFAULT_REJECTS_DIR, RunSettings
from pipeline.sinks import CountingSink, DryRunSink, FirehoseSink, Quota, Sink

log = logging.getLogger(__name__)


def aws_session(block_name: str | None) -> Any:
    """The boto3 session of a Prefect AwsCredentials block (None: boto3's standard chain)."""
    if block_name is None:
        return None
    from prefect_aws import AwsCredentials  # noqa: PLC0415 - imported only when a block is named

    try:
        block: Any = AwsCredentials.load(block_name)
    except ValueError as exc:
        raise ConfigError(
            f"no Prefect AwsCredentials block named {block_name!r} ({exc}); create it in the "
            "Prefect UI or with AwsCredentials(...).save(name)"
        ) from None
    return block.get_boto3_session()


class AwsAccess(Protocol):
    """Where a run's AWS credentials, S3 endpoint and checkpoint are (RunSettings, and the
    DayConfig of a nightly/range run)."""

    @property
    def aws_credentials_block(self) -> str | None: ...
    @property
    def s3_endpoint_url(self) -> str | None: ...
    @property
    def region(self) -> str | None: ...
    @property
    def checkpoint(self) -> str: ...
    @property
    def lease_seconds(self) -> float: ...


def open_aws(s: AwsAccess) -> Any:
    """The boto3 session of `s`'s AwsCredentials block (None: boto3's own credentials)."""
    return aws_session(s.aws_credentials_block)


def s3_store(s: AwsAccess, session: Any) -> S3Store:
    """The run's S3 access for s3:// sources (its endpoint and region, the session's
    credentials): one client, its caches and prefetcher; close it at the end of the run."""
    return S3Store(endpoint_url=s.s3_endpoint_url, region=s.region, session=session)


def checkpoint_store(s: AwsAccess, session: Any) -> CheckpointStore:
    """The checkpoint store of `s` (S3 with the session's credentials, if given)."""
    s3_client = None
    if session is not None and is_s3(s.checkpoint):
        s3_client = session.client("s3", endpoint_url=s.s3_endpoint_url, region_name=s.region)
    return make_checkpoint_store(
        s.checkpoint,
        endpoint_url=s.s3_endpoint_url,
        region=s.region,
        lease_seconds=s.lease_seconds,
        client=s3_client,
    )


def on_dask(settings: RunSettings) -> bool:
    """Whether the run's shards go to a Dask cluster (flows/dask_run.py)."""
    return bool(settings.dask_address or settings.workers)


class Run:
    """Owns the resources of one run: the plan, the job lock, the sink and the counters."""

    def __init__(self, settings: RunSettings, progress: ProgressListener | None = None) -> None:
        self.settings = settings
        self.progress = progress
        self.started = time.monotonic()
        self.counts = Counts()
        self.files_complete = 0
        self._stack = contextlib.ExitStack()
        self.store: CheckpointStore | None = None
        self.plan: Plan | None = None
        self.sink: Sink | None = None
        self.rejects: RejectsWriter | None = None
        self._counted: dict[int, set[int]] = {}  # file index -> chunks counted this run
        self.session: Any = None  # a boto3 session from an AwsCredentials block, if given
        self.s3: S3Store | None = None  # the run's S3 access for s3:// sources

    # ------------------------------------------------------------------ prepare
    def prepare(self) -> Plan:
        s = self.settings
        self.session = open_aws(s)
        self.s3 = s3_store(s, self.session)
        self._stack.callback(self.s3.close)
        store = checkpoint_store(s, self.session)
        self.store = store if s.mode == "send" else None
        if s.mode == "send":
            job = s.job or default_job_name(s)
            self._stack.enter_context(store.lock(job))
            if s.reset:
                store.reset(job)
                shards.reset_shards(store, job)
                log.warning("job %s: checkpoint reset, starting over", job)
            if not on_dask(s):
                shards.refuse_sharded_job(store, job)
        plan = make_plan(s, store, s3=self.s3)
        if s.mode == "send":
            store.commit(plan.state)  # proves the checkpoint is writable before sending
        self.plan = plan
        self.sink = self._make_sink(plan)
        self.rejects = RejectsWriter(self._rejects_path(plan))
        return plan

    def _rejects_path(self, plan: Plan) -> Path | None:
        s = self.settings
        if s.rejects is not None:
            return s.rejects
        if s.mode == "send" and s.checkpoint_is_s3:
            return DEFAULT_REJECTS_DIR / f"{plan.job}.ndjson"
        if s.mode == "send":
            return Path(s.checkpoint) / plan.job / "rejects.ndjson"
        if s.mode == "dry-run" and s.out is not None:
            return s.out / "rejects.ndjson"
        return None

    def _make_sink(self, plan: Plan, *, check_stream: bool = True) -> Sink:
        s = self.settings
        quota = Quota(s.max_records_per_second, s.max_mib_per_second, max(len(s.streams), 1))
        if s.mode == "validate":
            return CountingSink(quota)
        if s.mode == "dry-run":
            assert s.out is not None
            return DryRunSink(s.out, quota)
        assert s.stream is not None
        senders: list[FirehoseSender] = []
        try:
            for stream in s.streams:  # one sender each: own limiter, adaptive rate, in-flight
                client = make_firehose_client(
                    region=s.region,
                    endpoint_url=s.endpoint_url,
                    max_pool_connections=s.max_in_flight + 2,
                    connect_timeout_s=s.connect_timeout_s,
                    read_timeout_s=s.read_timeout_s,
                    session=self.session,
                )
                senders.append(
                    FirehoseSender(
                        client,
                        stream,
                        max_in_flight=s.max_in_flight,
                        max_records_per_second=s.max_records_per_second,
                        max_mib_per_second=s.max_mib_per_second,
                        retry=RetryPolicy(max_attempts=s.retry_attempts),
                        adaptive_rate=s.adaptive_rate,
                    )
                )
                if check_stream:  # Dask workers: the driver checked (DescribeDeliveryStream)
                    senders[-1].check_stream()
        except PermanentDeliveryError as exc:
            for sender in senders:
                sender.close()
            raise PreflightError(f"{exc} Nothing was sent.") from None
        except BaseException:
            for sender in senders:
                sender.close()
            raise
        return FirehoseSink(senders, quota)

    # ------------------------------------------------------------------ process
    def process_file(self, index: int) -> Counts:
        assert self.plan is not None and self.sink is not None and self.rejects is not None
        fp = self.plan.files[index]
        runner = FileRunner(
            self.plan,
            fp,
            index=index,
            sink=self.sink,
            store=self.store,
            rejects=self.rejects,
            progress=self.progress,
            counted_this_run=self._counted.setdefault(index, set()),
        )
        try:
            counts = runner.run()
        finally:
            self.counts.add(runner.counts)
        if runner.prog.complete or self.settings.mode != "send":
            self.files_complete += 1
        log.info(
            "%s: %d rows read, %d sent, %d rejected, %d skipped",
            fp.src.key,
            counts.rows_read,
            counts.actions_sent,
            counts.rows_rejected,
            counts.rows_skipped,
        )
        return counts

    # ------------------------------------------------------------------ finish
    def job_totals(self) -> dict[str, int]:
        """What the job's checkpoint says was delivered so far, over all its runs."""
        assert self.plan is not None
        state = self.plan.state
        return {
            "rows_sent": sum(f.rows_sent for f in state.files.values()),
            "rows_rejected": sum(f.rows_rejected for f in state.files.values()),
            "files_complete": sum(1 for f in state.files.values() if f.complete),
        }

    def finish(self, error: BaseException | None = None) -> RunSummary:
        s = self.settings
        job = self.plan.job if self.plan else (s.job or default_job_name(s))
        summary = RunSummary(job=job, mode=s.mode)
        try:
            if self.sink is not None:
                self.sink.close()
        finally:
            if self.rejects is not None:
                self.rejects.close()
            self._stack.close()
        c = self.counts
        for name, value in c.totals().items():
            setattr(summary, name, value)
        if self.sink is not None:
            for k, v in self.sink.stats().items():
                setattr(summary, k, v)
        summary.sample_actions = list(c.sample)
        summary.sent_without_field = dict(sorted(c.sent_without_field.items()))
        summary.duration_s = round(time.monotonic() - self.started, 3)
        summary.startup_s = round(self.started - PROCESS_T0, 3)
        summary.rows_per_second = round(c.rows_read / summary.duration_s, 1) if c.rows_read else 0
        if self.plan is not None:
            summary.files_total = len(self.plan.files)
            summary.rows_older_than_30_days = self.plan.old_rows
            summary.warnings = list(self.plan.warnings)
            summary.job_totals = self.job_totals()
        summary.files_complete = self.files_complete
        summary.checkpoint = s.checkpoint if s.mode == "send" else None
        summary.rejects_path = (
            str(self.rejects.path) if self.rejects and self.rejects.path else None
        )
        summary.out_dir = str(s.out) if s.out else None
        if error is not None:
            summary.status = "failed"
            summary.error = str(error) if isinstance(error, BackfillError) else repr(error)
            summary.error_type = type(error).__name__
        else:
            summary.status = "complete_with_rejects" if c.rows_rejected else "complete"
        if s.summary_json is not None:
            write_json_atomic(s.summary_json, summary.to_dict())
        return summary
