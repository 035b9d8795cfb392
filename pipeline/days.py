"""Days of a nightly sync: which days a run processes, each day's bounds, job and inputs.

Pure functions (no I/O, no Prefect), tested directly. A *day* is a calendar date in the sync's
time zone; day D's rows are those with D 00:00 <= time < D+1 00:00 in that zone (23 or 25 hours
on a DST change). See docs/nightly.md.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from connectors.checkpoint import validate_job_name
from moesif_backfill.errors import ConfigError

WindowMode = Literal["path", "time"]
DayKind = Literal["new", "rescan", "range"]


def parse_day(text: str, what: str = "date") -> dt.date:
    """A "YYYY-MM-DD" parameter; ConfigError naming the parameter otherwise."""
    try:
        return dt.date.fromisoformat(text.strip())
    except (ValueError, AttributeError):
        raise ConfigError(f"{what} {text!r} is not a day: give it as YYYY-MM-DD") from None


def zone(name: str) -> ZoneInfo:
    """The IANA time zone `name` (e.g. "UTC", "America/New_York"); ConfigError if unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"unknown time zone {name!r}: give an IANA name such as UTC or Europe/Berlin"
        ) from None


def target_day(scheduled_start: dt.datetime, timezone: str) -> dt.date:
    """The day a nightly run syncs by default: the day before its scheduled start, in
    `timezone`. A run started late (or for a schedule in the past) still syncs its own day."""
    if scheduled_start.tzinfo is None:
        raise ValueError("scheduled_start must be time-zone aware")
    return scheduled_start.astimezone(zone(timezone)).date() - dt.timedelta(days=1)


def day_bounds(day: dt.date, timezone: str) -> tuple[dt.datetime, dt.datetime]:
    """[day 00:00, next day 00:00) in `timezone`, as aware datetimes."""
    tz = zone(timezone)
    start = dt.datetime.combine(day, dt.time(0), tzinfo=tz)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), tzinfo=tz)
    return start, end


def day_range(first: dt.date, last: dt.date) -> list[dt.date]:
    """Every day from `first` to `last`, both included (empty when last < first)."""
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


def check_job(job: str) -> str:
    """A nightly/range job name: valid, and short enough for its day jobs' names."""
    validate_job_name(job)
    validate_job_name(day_job(job, dt.date(2000, 1, 1)))
    return job


def day_job(job: str, day: dt.date) -> str:
    """Day D's checkpoint job: its own lock, resumable state and summary artifact."""
    return f"{job}-{day:%Y-%m-%d}"


def format_sources(templates: Sequence[str], day: dt.date) -> list[str]:
    """The templates with `{date}` (a datetime.date; str.format syntax) filled in for `day`."""
    out = []
    for template in templates:
        try:
            out.append(template.format(date=day))
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(
                f"source template {template!r}: {type(exc).__name__} {exc}. The only "
                "placeholder is {date} (a date; e.g. dt={date:%Y-%m-%d}); write a literal "
                "brace as {{ or }}"
            ) from None
    return out


def check_templates(templates: Sequence[str], window: WindowMode) -> None:
    """Path mode needs every source to name a different place for each day: a template
    without a per-day placeholder would send the same files for every day."""
    if not templates:
        raise ConfigError("give at least one source (a path/prefix template)")
    one, two = dt.date(2001, 1, 30), dt.date(2001, 1, 31)
    first, second = format_sources(templates, one), format_sources(templates, two)
    if window == "path":
        same = [t for t, a, b in zip(templates, first, second, strict=True) if a == b]
        if same:
            raise ConfigError(
                f"source {same[0]!r} does not change from day to day, so with window=path "
                "every day would read the same files. Put the day in it (for example "
                "s3://exports/usage/dt={date:%Y-%m-%d}/), or use window=time to read these "
                "files for every day and send only each day's rows"
            )


@dataclass(frozen=True)
class DaySelection:
    """What one nightly run does: days to sync for the first time (`new`, oldest first),
    already-synced days to re-scan for late files, and missing days left for later runs."""

    target: dt.date
    new: tuple[dt.date, ...]
    rescan: tuple[dt.date, ...]
    remaining: tuple[dt.date, ...]

    def days(self) -> list[tuple[dt.date, DayKind]]:
        """Every day to run, oldest first (re-scanned days are all older than new ones)."""
        kinds: list[tuple[dt.date, DayKind]] = [(d, "rescan") for d in self.rescan]
        kinds += [(d, "new") for d in self.new]
        return sorted(kinds)


def select_days(
    target: dt.date,
    *,
    start_day: dt.date | None,
    last_synced: dt.date | None,
    max_catch_up_days: int,
    late_arrival_days: int,
) -> DaySelection:
    """Choose the days of one nightly run.

    * `start_day` is the first day this sync ever ran for (None: first run ever, which runs
      just `target`); `last_synced` the watermark: every day from `start_day` to it is synced.
    * new days: the day after the watermark (or `start_day`) to `target`, oldest first, at most
      `max_catch_up_days` of them; the rest are `remaining` (the run then fails, naming them).
    * re-scanned days: synced days in the `late_arrival_days` days before the first day this
      run would sync (`target`, or the day after the watermark if that is earlier), plus
      `target` itself when it is already synced; never before `start_day`.
    """
    if max_catch_up_days < 1:
        raise ConfigError(f"max_catch_up_days must be at least 1, got {max_catch_up_days}")
    if late_arrival_days < 0:
        raise ConfigError(f"late_arrival_days must be 0 or more, got {late_arrival_days}")
    if start_day is None:
        return DaySelection(target, (target,), (), ())
    if target < start_day:
        raise ConfigError(
            f"{target} is before {start_day}, the first day this nightly sync ran for; use "
            "backfill-range (moesif-backfill range) for days before it"
        )
    first_pending = start_day if last_synced is None else last_synced + dt.timedelta(days=1)
    missing = day_range(first_pending, target)
    new, remaining = missing[:max_catch_up_days], missing[max_catch_up_days:]
    rescan: list[dt.date] = []
    if last_synced is not None:
        last = min(target, last_synced)
        begin = min(target, first_pending) - dt.timedelta(days=late_arrival_days)
        rescan = day_range(max(begin, start_day), last)
    return DaySelection(target, tuple(new), tuple(rescan), tuple(remaining))


def advance_watermark(
    last_synced: dt.date | None, start_day: dt.date, completed: Sequence[dt.date]
) -> dt.date | None:
    """The watermark after a run: moved over consecutive completed days only, from the day
    after the old watermark (or `start_day`). A gap stops it, whatever completed after it."""
    done = set(completed)
    day = start_day if last_synced is None else last_synced + dt.timedelta(days=1)
    while day in done:
        last_synced = day
        day += dt.timedelta(days=1)
    return last_synced


def span_text(days: Sequence[dt.date]) -> str:
    """ "2026-11-20" or "2026-11-20 .. 2026-11-25 (6 days)" for a sorted run of days."""
    if not days:
        return "none"
    if len(days) == 1:
        return f"{days[0]}"
    consecutive = (days[-1] - days[0]).days + 1 == len(days)
    if consecutive:
        return f"{days[0]} .. {days[-1]} ({len(days)} days)"
    return ", ".join(str(d) for d in days)


__all__ = [
    "DayKind",
    "DaySelection",
    "WindowMode",
    "advance_watermark",
    "check_job",
    "check_templates",
    "day_bounds",
    "day_job",
    "day_range",
    "format_sources",
    "parse_day",
    "select_days",
    "span_text",
    "target_day",
    "zone",
]
