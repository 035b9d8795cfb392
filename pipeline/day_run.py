"""One day of a nightly sync or a date-range backfill, run as its own backfill job.

Day D is the checkpoint job ``<job>-D``, run by the `run_job` the caller passes in (in Prefect,
the `moesif-backfill` flow as a nested flow run with its own summary artifact
``<job>-D-summary``). Its sources are the templates filled in for D (window=path), or
the plain sources with the run's time window set to D in the sync's time zone (window=time).
A day whose inputs are not there fails loudly, unless empty days are allowed.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from connectors.file_access import need_store
from connectors.local_files import local_data_files
from connectors.s3_errors import is_s3
from connectors.s3_store import S3Store
from moesif_backfill.errors import (
    BackfillError,
    ConfigError,
    DeliveryError,
    EmptyDayError,
    MissingDayError,
    exit_code_for,
)
from pipeline.day_settings import DaySettings
from pipeline.days import DayKind, day_job, format_sources
from pipeline.resources import open_aws, s3_store
from pipeline.settings import RunSettings

log = logging.getLogger(__name__)

OK_STATUSES = ("complete", "complete_with_rejects", "empty")


@dataclass
class DayResult:
    day: dt.date
    kind: DayKind
    job: str
    status: str = "not_run"  # complete | complete_with_rejects | empty | failed | not_run
    rows_read: int | None = None
    sent: int | None = None
    rejected: int | None = None
    skipped: int | None = None
    outside_window: int | None = None
    error: str | None = None
    error_type: str | None = None
    config_error: bool = False
    stops_others: bool = False  # a failure the next days would hit too (Firehose down)

    @property
    def ok(self) -> bool:
        return self.status in OK_STATUSES

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["day"] = self.day.isoformat()
        del d["stops_others"], d["config_error"]
        return d

    def fail(self, exc: BaseException) -> DayResult:
        self.status = "failed"
        self.error = str(exc) if isinstance(exc, BackfillError) else repr(exc)
        self.error_type = type(exc).__name__
        # A destination that refused the day before anything was committed (Moesif's Collector
        # API: 401, 402) is a configuration problem too (exit 2).
        refused_early = exit_code_for(exc, committed=self.sent or 0) == 2
        self.config_error = isinstance(exc, ConfigError) or refused_early
        self.stops_others = isinstance(exc, DeliveryError)
        return self


def input_absent(spec: str, s3: S3Store | None = None) -> bool:
    """True when `spec` (a path, directory, glob or s3:// prefix) holds no data file at all:
    it does not exist, or holds only hidden/bookkeeping files (_SUCCESS, .crc, ...). The same
    expansion as the run's own discovery (connectors.discovery; `s3`: the S3 access for an
    s3:// spec)."""
    if is_s3(spec):
        return not need_store(spec, s3).list(spec)
    return not local_data_files(spec)


def _day_inputs(config: DaySettings, day: dt.date) -> list[str] | None:
    """The day's sources; None for an allowed empty day (every source empty); MissingDayError
    if any source is absent while others have data, or if all are absent and empty days are
    not allowed. A day is delivered only when every source template has delivered it."""
    specs = format_sources(config.sources, day)
    s3 = s3_store(config, open_aws(config)) if any(is_s3(s) for s in specs) else None
    try:
        absent = [s for s in specs if input_absent(s, s3)]
    finally:
        if s3 is not None:
            s3.close()
    if not absent:
        return specs
    if len(absent) == len(specs):
        if config.allow_empty_days:
            return None
        raise MissingDayError(
            f"day {day}: no input at {', '.join(absent)}. Has the export for {day} landed yet? "
            f"Nothing was sent for this day and the nightly watermark stays before it; the next "
            "run tries it again. If the day really has no data, run it once with "
            "allow_empty_days (--allow-empty-days)"
        )
    present = [s for s in specs if s not in absent]
    raise MissingDayError(
        f"day {day} is incomplete: no input at {', '.join(absent)} while "
        f"{', '.join(present)} has data. Has every export for {day} landed yet? Nothing was "
        "sent for this day and the nightly watermark stays before it; the next run tries it "
        "again. allow_empty_days (--allow-empty-days) accepts only a day where every source "
        "is empty; if this source really has no data for the day, leave it out of the sources "
        "for that day (backfill-range with the other sources)"
    )


RunJob = Callable[[str, RunSettings], object]
"""Runs one backfill job (its name, its settings); raises when the job fails."""


def run_day(
    config: DaySettings, day: dt.date, kind: DayKind, workdir: Path, run_job: RunJob
) -> DayResult:
    """Run day `day` as its own backfill job through `run_job`; never raises for a failed day
    (see `status`)."""
    job = day_job(config.job, day)
    result = DayResult(day=day, kind=kind, job=job)
    summary_path = workdir / f"{job}.json"
    try:
        specs = _day_inputs(config, day)
        if specs is None:
            result.status = "empty"
            result.rows_read = result.sent = result.rejected = result.skipped = 0
            result.outside_window = 0
            log.warning("day %s: no input; counted as an empty day (allow_empty_days)", day)
            return result
        settings = config.settings_for(day, summary_path, specs)
        run_job(job, settings)
    except Exception as exc:
        _read_counts(result, summary_path)
        log.error("day %s (%s) failed: %s", day, job, result.fail(exc).error)
        return result
    _read_counts(result, summary_path)
    result.status = "complete_with_rejects" if result.rejected else "complete"
    in_day = (result.rows_read or 0) - (result.outside_window or 0)
    if in_day == 0:
        if config.allow_empty_days:
            result.status = "empty"
        else:
            where = "in its time window" if config.window == "time" else "in its files"
            result.fail(
                EmptyDayError(
                    f"day {day}: no row {where} ({', '.join(settings.sources)}). An export "
                    "that is not complete yet? The nightly watermark stays before this day and "
                    "the next run tries it again. If the day really has no data, run it once "
                    "with allow_empty_days (--allow-empty-days)"
                )
            )
    return result


def _read_counts(result: DayResult, summary_path: Path) -> None:
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # the day failed before its run started (no summary)
    result.rows_read = summary.get("rows_read")
    result.sent = summary.get("actions_sent")
    result.rejected = summary.get("rows_rejected")
    result.skipped = summary.get("rows_skipped")
    result.outside_window = summary.get("rows_outside_window", 0)


COUNTS = ("rows_read", "sent", "rejected", "skipped", "outside_window")


def totals(results: Sequence[DayResult]) -> dict[str, int]:
    return {k: sum(getattr(r, k) or 0 for r in results) for k in COUNTS}


def table_rows(results: Sequence[DayResult]) -> list[dict[str, Any]]:
    """The per-day table (Prefect table artifact), with a totals row. Counts are numbers
    (None: the day did not get that far), not their text."""
    rows: list[dict[str, Any]] = [
        {
            "day": r.day.isoformat(),
            "kind": r.kind,
            "status": r.status,
            **{k: getattr(r, k) for k in COUNTS},
            "error": (r.error or "")[:300],
        }
        for r in results
    ]
    total = totals(results)
    rows.append({"day": "total", "kind": "", "status": "", **total} | {"error": ""})
    return rows


__all__ = [
    "DayResult",
    "input_absent",
    "run_day",
    "table_rows",
    "totals",
]
