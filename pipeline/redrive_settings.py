"""`redrive`'s settings: the sending fields of every job (`SendSettings`) and where Firehose's
failed deliveries are, which of them to send, what to do with the objects afterwards."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from pipeline.send_settings import SendSettings


def _instant(value: Any) -> Any:
    """An ISO 8601 instant with its zone, or a date (its midnight, UTC)."""
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    if not isinstance(value, str):
        return value
    text = value.strip()
    if len(text) == 10:
        try:
            day = dt.date.fromisoformat(text)
        except ValueError:
            pass
        else:
            return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{value!r} is not an ISO 8601 time with its zone (2026-01-02T03:00:00Z) or a date "
            "(2026-01-02)"
        ) from None
    if when.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone: add one (Z, +02:00) or give a date")
    return when


Instant = Annotated[dt.datetime, BeforeValidator(_instant)]


class RedriveSettings(SendSettings):
    """What `moesif-backfill redrive` does (README "Redriving Firehose's failed deliveries")."""

    location: str = Field(
        min_length=6, description="the error output location, s3://BUCKET/PREFIX/"
    )
    since: Instant | None = Field(
        default=None,
        description="only lines whose arrivalTimestamp is at or after this instant (ISO 8601 "
        "with zone, or a date: its midnight UTC)",
    )
    until: Instant | None = Field(
        default=None,
        description="only lines whose arrivalTimestamp is before this instant (ISO 8601 with "
        "zone, or a date: its midnight UTC)",
    )
    delete_after: bool = Field(
        default=False,
        description="delete each object once every action of it was acknowledged and none of "
        "its lines was rejected, outside --since/--until or left pending as too old",
    )
    mode: Literal["send", "dry-run"] = "send"
    out: Path | None = Field(default=None, description="output directory for --dry-run")

    @model_validator(mode="after")
    def _consistent(self) -> RedriveSettings:
        if not self.location.lower().startswith("s3://"):
            raise ValueError(
                f"location {self.location!r}: give the S3 location of the failed deliveries, "
                "s3://BUCKET/PREFIX/"
            )
        if self.mode == "send":
            self.check_target()
        if len(self.streams) > 1:
            raise ValueError(
                "redrive sends to one stream: give --stream once (the actions keep their "
                "transaction_ids and original bytes, so spreading them by id is not needed; "
                "Moesif deduplicates them whichever stream they come through)"
            )
        if self.mode == "dry-run" and self.out is None:
            raise ValueError("--dry-run needs --out DIR for the would-be records")
        if self.mode == "dry-run" and self.delete_after:
            raise ValueError("--delete-after deletes delivered objects: not with --dry-run")
        if self.since and self.until and self.since >= self.until:
            raise ValueError(f"--since {self.since} must be before --until {self.until}")
        return self

    @property
    def window_ms(self) -> tuple[int | None, int | None] | None:
        """[since, until) as epoch ms (None: no window)."""
        if self.since is None and self.until is None:
            return None
        return (
            None if self.since is None else int(self.since.timestamp() * 1000),
            None if self.until is None else int(self.until.timestamp() * 1000),
        )


def default_redrive_job(location: str) -> str:
    """A stable job name of the (normalised) location."""
    digest = hashlib.sha256(location.encode()).hexdigest()[:16]
    return f"redrive-{digest}"


__all__ = ["Instant", "RedriveSettings", "default_redrive_job"]
