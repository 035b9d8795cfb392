"""The nightly sync's watermark: the last day synced, kept in the checkpoint store.

Stored as the document ``nightly.json`` of the nightly job (``<checkpoint>/<job>/nightly.json``
locally, the same key under an ``s3://`` checkpoint), written atomically with the checkpoint's
checksummed envelope while the run holds the job's lock. It never holds a secret: only days,
the time zone, the window mode and timestamps.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from connectors.checkpoint import CheckpointStore
from moesif_backfill.errors import CheckpointError, ConfigError
from pipeline.days import WindowMode

DOCUMENT = "nightly.json"


class Watermark(BaseModel):
    """Every day from `start_day` to `last_synced_day` was delivered completely."""

    model_config = ConfigDict(extra="forbid")

    job: str
    start_day: dt.date  # the first day this sync ran for (days before it: backfill-range)
    last_synced_day: dt.date | None = None  # None until the first day completes
    timezone: str
    window: WindowMode
    updated_at: str

    @classmethod
    def first(cls, job: str, day: dt.date, timezone: str, window: WindowMode) -> Watermark:
        return cls(job=job, start_day=day, timezone=timezone, window=window, updated_at=_now())

    def check_matches(self, timezone: str, window: WindowMode, where: str) -> None:
        """The days of a sync mean the same thing in every run: refuse a changed time zone or
        window mode (day boundaries would move, leaving gaps or overlaps)."""
        if (self.timezone, self.window) != (timezone, window):
            raise ConfigError(
                f"nightly job {self.job!r} syncs days in time zone {self.timezone} with "
                f"window={self.window} ({where}); this run asks for {timezone} / {window}, which "
                "moves day boundaries. Keep the old settings, or start a new sync under a new "
                "job name (cover the switch-over days once with backfill-range)"
            )

    def advanced(self, last_synced_day: dt.date | None) -> Watermark:
        return self.model_copy(update={"last_synced_day": last_synced_day, "updated_at": _now()})


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def load_watermark(store: CheckpointStore, job: str) -> Watermark | None:
    """The job's watermark, or None before its first run."""
    body = store.read_document(job, DOCUMENT)
    if body is None:
        return None
    try:
        return Watermark.model_validate(body)
    except ValidationError as exc:
        raise CheckpointError(
            f"{watermark_location(store, job)} is not a valid watermark "
            f"({exc.error_count()} problem(s)); restore it, or delete it and cover the days "
            "since the last synced one with backfill-range (the next nightly run then starts "
            "from its target day)"
        ) from None


def save_watermark(store: CheckpointStore, watermark: Watermark) -> None:
    body: dict[str, Any] = watermark.model_dump(mode="json")
    store.write_document(watermark.job, DOCUMENT, body)


def watermark_location(store: CheckpointStore, job: str) -> str:
    return f"{store.describe()}/{job}/{DOCUMENT}"


__all__ = ["DOCUMENT", "Watermark", "load_watermark", "save_watermark", "watermark_location"]
