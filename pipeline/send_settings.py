"""What every sending command shares (`run`, and `redrive`): where actions go, how fast, the
checkpoint, the job's outputs. `pipeline.settings.RunSettings` adds the input side of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_CHECKPOINT_DIR = ".moesif-backfill/checkpoints"
DEFAULT_MOESIF_URL = "https://api.moesif.net"
# Moesif's 1 MB event limit; the Firehose path keeps transforms.actions.MAX_ACTION_BYTES.
FIREHOSE_ACTION_MAX_BYTES = 1_000_000
Sink = Literal["firehose", "moesif"]


def target_problem(sink: str, streams: list[str], *, preview: bool) -> str | None:
    """What is wrong with a send's target, or None: it has one, --stream NAME (Firehose) or
    --sink moesif (the Collector API). `preview`: the command also takes --dry-run --out DIR."""
    if sink == "firehose" and not streams:
        also = ", or --dry-run --out DIR to preview" if preview else ""
        return (
            "give --stream NAME to send through Firehose, --sink moesif to send straight to "
            f"Moesif's Collector API{also}"
        )
    if sink == "moesif" and streams:
        return (
            "--stream is for --sink firehose: --sink moesif sends to the Collector API "
            "(--moesif-url), give one or the other"
        )
    return None


class SendSettings(BaseModel):
    """Where and how a job's actions are sent, and where its progress is kept. Holds no
    secret: credentials come from boto3's chain (or a Prefect block named here)."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    sink: Sink = Field(
        default="firehose",
        description="where actions go: firehose (PutRecordBatch to --stream) or moesif (straight "
        "to Moesif's Collector API, POST /v1/actions/batch; the application id from "
        "MOESIF_APPLICATION_ID or --moesif-app-id-block)",
    )
    moesif_url: str = Field(
        default=DEFAULT_MOESIF_URL,
        min_length=1,
        description="--sink moesif: the Collector API's base URL (a proxy, a local stand-in)",
    )
    moesif_app_id_block: str | None = Field(
        default=None,
        min_length=1,
        description="--sink moesif: a Prefect Secret block holding the Moesif application id "
        "(instead of the MOESIF_APPLICATION_ID environment variable)",
    )
    moesif_batch_max_bytes: int = Field(
        default=12_000_000,
        ge=1_000,
        le=15_000_000,
        description="--sink moesif: largest uncompressed JSON body of one /v1/actions/batch call",
    )
    moesif_action_max_bytes: int = Field(
        default=1_000_000,
        ge=100,
        le=1_000_000,
        description="--sink moesif: larger actions are rejected, not sent (Moesif's 1 MB event "
        "limit)",
    )
    streams: list[str] = Field(
        default_factory=list,
        description="Firehose streams; with several, an action goes to the stream picked by a "
        "hash of its transaction_id (always the same one)",
    )
    region: str | None = None
    endpoint_url: str | None = None
    checkpoint: str = Field(
        default=DEFAULT_CHECKPOINT_DIR, description="a local directory or s3://bucket/prefix/"
    )
    lease_seconds: float = Field(
        default=60.0, ge=2, le=3600, description="S3 checkpoint lease; a crashed run's expires"
    )
    aws_credentials_block: str | None = Field(
        default=None, min_length=1, description="a Prefect AwsCredentials block to use"
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="S3 endpoint override (sources and checkpoints)"
    )
    job: str | None = None
    rejects: Path | None = None
    summary_json: Path | None = None
    ledger: str | None = Field(
        default=None,
        min_length=1,
        description="write the ID ledger (one Parquet row per input row: transaction_id, "
        "status) under this directory or s3://bucket/prefix/, in a job=<job>/ folder",
    )
    allow_older_than_30_days: bool = False
    skip_older_than_30_days: bool = Field(
        default=False,
        description="send only the rows inside Moesif's 30-day window (from the run's start); "
        "the older ones stay pending in the checkpoint (rows_too_old) for a later run with "
        "--allow-older-than-30-days",
    )
    max_records_per_second: float | None = Field(
        default=None,
        gt=0,
        description="each stream's Firehose records/s quota (--sink moesif: actions/s); sends "
        "shaped to 98%",
    )
    max_mib_per_second: float | None = Field(
        default=None,
        gt=0,
        description="each stream's Firehose MiB/s quota (--sink moesif: MiB/s of actions); "
        "sends shaped to 98%",
    )
    adaptive_rate: bool = Field(
        default=True,
        description="on throttling, lower the send rate (multiplicative decrease) and raise it "
        "again slowly (additive increase)",
    )
    chunk_rows: int = Field(
        default=10_000, ge=1, le=1_000_000, description="rows per checkpointed chunk"
    )
    max_in_flight: int = Field(
        default=8,
        ge=1,
        le=64,
        description="PutRecordBatch calls (--sink moesif: batch POSTs) at once",
    )
    chunks_in_flight: int = Field(default=4, ge=1, le=64)
    retry_budget_s: float = Field(
        default=60.0,
        ge=0,
        description="seconds of backoff a run may spend in all on retrying shards that failed "
        "with a transient delivery error (0: no retries)",
    )
    retry_attempts: int = Field(
        default=10, ge=1, le=1000, description="PutRecordBatch attempts in a row without progress"
    )
    stall_timeout_s: float = Field(
        default=40.0,
        gt=0,
        description="the run fails (exit 1, nothing lost) when a stream acknowledges nothing for "
        "this long while calls fail (an endpoint lost: connections refused, dropped or never "
        "answered); with the read timeout, a lost endpoint ends the run within about "
        "stall_timeout_s + read_timeout_s (60 s by default)",
    )
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(
        default=20.0, gt=0, description="seconds a PutRecordBatch call may wait for an answer"
    )

    reset: bool = False

    @model_validator(mode="before")
    @classmethod
    def _one_stream(cls, data: Any) -> Any:
        """`stream="x"` (one stream, the common case) is short for `streams=["x"]`."""
        if isinstance(data, dict) and "stream" in data:
            data = dict(data)
            one = data.pop("stream")
            if one is not None:
                if data.get("streams"):
                    raise ValueError("give either stream or streams, not both")
                data["streams"] = [one]
        return data

    @field_validator("streams")
    @classmethod
    def _stream_names(cls, v: list[str]) -> list[str]:
        for name in v:
            if not 1 <= len(name) <= 64:
                raise ValueError(f"stream name {name!r} must have 1-64 characters")
        dup = sorted({n for n in v if v.count(n) > 1})
        if dup:
            raise ValueError(f"stream {dup[0]!r} is given twice; give each stream once")
        return v

    @property
    def stream(self) -> str | None:
        """The first (usually the only) stream."""
        return self.streams[0] if self.streams else None

    def check_target(self) -> None:
        """A send has one target: --stream (Firehose) or --sink moesif (ValueError if not)."""
        problem = target_problem(self.sink, self.streams, preview=True)
        if problem is not None:
            raise ValueError(problem)

    @property
    def max_action_bytes(self) -> int:
        """The largest action the sink takes: larger ones are rejected before they are sent."""
        if self.sink == "moesif":
            return self.moesif_action_max_bytes
        return FIREHOSE_ACTION_MAX_BYTES

    @field_validator("moesif_url")
    @classmethod
    def _moesif_url(cls, v: str) -> str:
        from urllib.parse import urlsplit  # noqa: PLC0415

        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "moesif_url must be an http:// or https:// URL, e.g. " + DEFAULT_MOESIF_URL
            )
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError("moesif_url takes no user, password, query or fragment")
        return v.rstrip("/")

    @field_validator("checkpoint", "ledger", mode="before")
    @classmethod
    def _as_text(cls, v: object) -> object:
        return str(v) if isinstance(v, Path) else v

    @property
    def ledger_is_s3(self) -> bool:
        return bool(self.ledger) and str(self.ledger).lower().startswith("s3://")

    @property
    def checkpoint_is_s3(self) -> bool:
        return self.checkpoint.lower().startswith("s3://")

    @model_validator(mode="after")
    def _thirty_days(self) -> Any:
        if self.allow_older_than_30_days and self.skip_older_than_30_days:
            raise ValueError(
                "give --allow-older-than-30-days (send rows older than 30 days) or "
                "--skip-older-than-30-days (leave them pending), not both"
            )
        return self


__all__ = [
    "DEFAULT_CHECKPOINT_DIR",
    "DEFAULT_MOESIF_URL",
    "FIREHOSE_ACTION_MAX_BYTES",
    "SendSettings",
    "Sink",
    "target_problem",
]
