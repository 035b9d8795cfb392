"""Settings of a nightly sync and of a date-range backfill: one model each, the single source of
their defaults (the `nightly-sync` / `backfill-range` flows take them as their `settings`
parameter, the CLI's `nightly` / `range` flags take their defaults and help from the fields).

`DaySettings` is what every day of a run shares; `options` holds further `RunSettings` fields
for every day's job (chunk_rows, max_in_flight, ...), validated against `RunSettings`.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from moesif_backfill.errors import ConfigError
from pipeline.send_settings import SendSettings, Sink, target_problem
from pipeline.settings import DEFAULT_CHECKPOINT_DIR, RunSettings

# pipeline.days (and the checkpoint module it needs) loads with the first check: `--help` reads
# these models' fields and should not pay for it.
WindowMode = Literal["path", "time"]

# RunSettings fields a day's settings fix themselves: not accepted in `options`.
FIXED_PER_DAY = frozenset(
    {
        "sources",
        "mapping",
        "job",
        "stream",
        "streams",
        "checkpoint",
        "endpoint_url",
        "region",
        "s3_endpoint_url",
        "aws_credentials_block",
        "allow_older_than_30_days",
        "mode",
        "out",
        "window_start",
        "window_end",
        "rejects",
        "summary_json",
        "ledger",
        "sink",
        "moesif_url",
        "moesif_app_id_block",
        "moesif_batch_max_bytes",
        "moesif_action_max_bytes",
    }
)
_SEND = SendSettings.model_fields


class DaySettings(BaseModel):
    """Everything the days of one nightly/range run share. Holds no secret."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    sources: list[str] = Field(
        min_length=1,
        description="path/prefix templates with {date} (e.g. 'exports/dt={date:%Y-%m-%d}/'); "
        "with window=time, files read for every day",
    )
    mapping: str = Field(min_length=1, description="the mapping YAML file")
    job: str = Field(description="sync name; day D's checkpoint job is JOB-D")
    streams: list[str] = Field(
        default_factory=list, description="Firehose stream(s) (--sink firehose: required)"
    )
    sink: Sink = Field(default="firehose", description=_SEND["sink"].description)
    moesif_url: str = Field(
        default=_SEND["moesif_url"].default, description=_SEND["moesif_url"].description
    )
    moesif_app_id_block: str | None = Field(
        default=None, min_length=1, description=_SEND["moesif_app_id_block"].description
    )
    moesif_batch_max_bytes: int = Field(
        default=_SEND["moesif_batch_max_bytes"].default,
        ge=1_000,
        le=15_000_000,
        description=_SEND["moesif_batch_max_bytes"].description,
    )
    moesif_action_max_bytes: int = Field(
        default=_SEND["moesif_action_max_bytes"].default,
        ge=100,
        le=1_000_000,
        description=_SEND["moesif_action_max_bytes"].description,
    )
    timezone: str = Field(default="UTC", description="IANA time zone of the days")
    window: WindowMode = Field(
        default="path",
        description="path: SOURCE names each day's files; time: send each day's rows of SOURCE",
    )
    checkpoint: str = Field(
        default=DEFAULT_CHECKPOINT_DIR, description="a local directory or s3://bucket/prefix/"
    )
    endpoint_url: str | None = Field(default=None, description="Firehose endpoint URL")
    region: str | None = Field(default=None, description="AWS region")
    s3_endpoint_url: str | None = Field(
        default=None, description="S3 endpoint URL (sources and checkpoints)"
    )
    aws_credentials_block: str | None = Field(
        default=None, min_length=1, description="a Prefect AwsCredentials block to use"
    )
    allow_older_than_30_days: bool = Field(
        default=False, description="send rows older than Moesif's 30-day window"
    )
    allow_empty_days: bool = Field(default=False, description="a day without input is not an error")
    ledger: str | None = Field(
        default=RunSettings.model_fields["ledger"].default,
        min_length=1,
        description=RunSettings.model_fields["ledger"].description,
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="further RunSettings fields for every day's job (chunk_rows, "
        "max_in_flight, retry_attempts, ...)",
    )

    @model_validator(mode="after")
    def _sink_needs(self) -> DaySettings:
        problem = target_problem(self.sink, self.streams, preview=False)
        if problem is not None:
            raise ValueError(problem)
        return self

    @property
    def lease_seconds(self) -> float:
        """The S3 checkpoint lease of the days (options.lease_seconds, else RunSettings')."""
        default = RunSettings.model_fields["lease_seconds"].default
        return float(self.options.get("lease_seconds", default))

    def check(self, *, allow_reset: bool) -> None:
        """Everything that can be checked before the first day runs (ConfigError)."""
        from pipeline.days import check_job, check_templates, zone  # noqa: PLC0415

        check_job(self.job)
        zone(self.timezone)
        check_templates(self.sources, self.window)
        fixed = sorted(FIXED_PER_DAY.intersection(self.options))
        if fixed:
            raise ConfigError(
                f"options may not set {', '.join(fixed)}: these are settings of the sync "
                "itself, or fixed per day"
            )
        if self.options.get("reset") and not allow_reset:
            raise ConfigError(
                "options.reset is not accepted by nightly-sync (it would forget every re-scanned "
                "day's checkpoint on every run); reset days with backfill-range instead"
            )
        self.settings_for(dt.date(2001, 1, 31), Path("summary.json"))

    def settings_for(
        self, day: dt.date, summary_json: Path, sources: list[str] | None = None
    ) -> RunSettings:
        from pipeline.days import day_bounds, day_job, format_sources  # noqa: PLC0415

        data: dict[str, Any] = dict(self.options)
        data.update(
            sources=list(sources) if sources is not None else format_sources(self.sources, day),
            mapping=self.mapping,
            job=day_job(self.job, day),
            streams=list(self.streams),
            checkpoint=self.checkpoint,
            endpoint_url=self.endpoint_url,
            region=self.region,
            s3_endpoint_url=self.s3_endpoint_url,
            aws_credentials_block=self.aws_credentials_block,
            allow_older_than_30_days=self.allow_older_than_30_days,
            summary_json=summary_json,
            ledger=self.ledger,
            sink=self.sink,
            moesif_url=self.moesif_url,
            moesif_app_id_block=self.moesif_app_id_block,
            moesif_batch_max_bytes=self.moesif_batch_max_bytes,
            moesif_action_max_bytes=self.moesif_action_max_bytes,
        )
        if self.window == "time":
            data["window_start"], data["window_end"] = day_bounds(day, self.timezone)
        try:
            return RunSettings.model_validate(data)
        except ValidationError as exc:
            raise ConfigError.invalid("settings", exc) from None


class NightlySettings(DaySettings):
    """A nightly sync: yesterday (or a given date), missed days, late files."""

    max_catch_up_days: int = Field(default=7, ge=1, description="missed days synced per run")
    late_arrival_days: int = Field(
        default=2, ge=0, description="synced days re-scanned for late files"
    )


class RangeSettings(DaySettings):
    """A date-range backfill: the days start..end, each its own job."""

    concurrency: int = Field(default=2, ge=1, le=32, description="days at once")


def validated(model: type[DaySettings], data: dict[str, Any]) -> Any:
    """`model` from `data`, a ConfigError naming each refused field otherwise."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError.invalid("settings", exc) from None


__all__ = ["FIXED_PER_DAY", "DaySettings", "NightlySettings", "RangeSettings", "validated"]
