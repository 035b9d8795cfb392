"""What a run (or one shard of it, on any worker) opens: AWS access, the checkpoint store, the
sink. Plain functions of the settings, so the driver and a Dask worker build them alike."""

from __future__ import annotations

import os
from typing import Any, Protocol

from connectors.checkpoint import CheckpointStore
from connectors.checkpoint_factory import make_checkpoint_store
from connectors.firehose import FirehoseSender, RetryPolicy
from connectors.firehose_client import make_firehose_client
from connectors.moesif_collector import CollectorClient, CollectorSender
from connectors.s3_errors import is_s3
from connectors.s3_store import S3Store
from moesif_backfill.errors import ConfigError, PermanentDeliveryError, PreflightError
from pipeline.moesif_sink import CollectorSink
from pipeline.send_settings import SendSettings
from pipeline.settings import RunSettings
from pipeline.sinks import CountingSink, DryRunSink, FirehoseSink, Quota, Sink

APP_ID_ENV = "MOESIF_APPLICATION_ID"


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


def moesif_app_id(block_name: str | None) -> str:
    """The Moesif application id (--sink moesif): the value of the Prefect `Secret` block
    `block_name` when one is named, else the MOESIF_APPLICATION_ID environment variable.
    ConfigError (exit 2) saying how to provide it when there is none. Never logged."""
    if block_name is not None:
        from prefect.blocks.system import Secret  # noqa: PLC0415 - only when a block is named

        try:
            block: Any = Secret.load(block_name)
        except ValueError:
            raise ConfigError(
                f"no Prefect Secret block named {block_name!r} (--moesif-app-id-block); create "
                "it in the Prefect UI or with Secret(value=...).save(name), holding the Moesif "
                "application id"
            ) from None
        value = block.get()
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(
                f"the Prefect Secret block {block_name!r} does not hold a Moesif application "
                "id (a non-empty string)"
            )
        return value.strip()
    value = os.environ.get(APP_ID_ENV, "").strip()
    if not value:
        raise ConfigError(
            "--sink moesif needs the Moesif application id: set the environment variable "
            f"{APP_ID_ENV}, or name a Prefect Secret block holding it with "
            "--moesif-app-id-block NAME (never a flag value). Nothing was read or sent."
        )
    return value


def check_sink(s: SendSettings) -> None:
    """What the sink needs that can be checked before anything is read: the application id
    of --sink moesif (ConfigError)."""
    if s.sink == "moesif":
        moesif_app_id(s.moesif_app_id_block)


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


def make_sink(s: RunSettings, session: Any, *, check_stream: bool = True) -> Sink:
    """The sink of the settings' mode: Firehose (one sender per stream), a dry-run directory, or
    a counter (validate). `check_stream`: DescribeDeliveryStream first (the driver does; a
    shard on a Dask worker does not repeat it)."""
    if s.mode == "validate":
        return CountingSink(quota_of(s))
    if s.mode == "dry-run":
        assert s.out is not None
        return DryRunSink(s.out, quota_of(s))
    return send_sink(s, session, check_stream=check_stream)


def quota_of(s: SendSettings) -> Quota:
    """The send limits of `s`, per stream (the Collector API: one)."""
    streams = 1 if s.sink == "moesif" else max(len(s.streams), 1)
    return Quota(s.max_records_per_second, s.max_mib_per_second, streams)


def send_sink(s: SendSettings, session: Any, *, check_stream: bool = True) -> Sink:
    """The sink that delivers (`make_sink`'s send mode; also `redrive`'s): by `s.sink`,
    Firehose, one sender per stream (`check_stream`: DescribeDeliveryStream first), or Moesif's
    Collector API (its application id resolved here, so a Dask worker resolves it itself; no
    preflight call)."""
    if s.sink == "moesif":
        return collector_sink(s)
    return firehose_sink(s, session, check_stream=check_stream)


def collector_sink(s: SendSettings) -> CollectorSink:
    """The --sink moesif sink of `s`."""
    client = CollectorClient(
        s.moesif_url,
        moesif_app_id(s.moesif_app_id_block),
        connect_timeout_s=s.connect_timeout_s,
        read_timeout_s=s.read_timeout_s,
    )
    sender = CollectorSender(client, batch_max_bytes=s.moesif_batch_max_bytes, **sender_options(s))
    return CollectorSink(sender, quota_of(s))


def sender_options(s: SendSettings) -> dict[str, Any]:
    """What a Firehose and a Collector sender take alike from the settings: calls in flight,
    shaping, retries, adaptive rate, stall timeout."""
    return {
        "max_in_flight": s.max_in_flight,
        "max_records_per_second": s.max_records_per_second,
        "max_mib_per_second": s.max_mib_per_second,
        "retry": RetryPolicy(max_attempts=s.retry_attempts),
        "adaptive_rate": s.adaptive_rate,
        "stall_timeout_s": s.stall_timeout_s,
    }


def firehose_sink(s: SendSettings, session: Any, *, check_stream: bool = True) -> FirehoseSink:
    """The Firehose sink of `s`: one sender per stream."""
    quota = quota_of(s)
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
                session=session,
            )
            senders.append(FirehoseSender(client, stream, **sender_options(s)))
            if check_stream:
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


__all__ = [
    "AwsAccess",
    "aws_session",
    "check_sink",
    "checkpoint_store",
    "collector_sink",
    "firehose_sink",
    "make_sink",
    "moesif_app_id",
    "open_aws",
    "quota_of",
    "send_sink",
]
