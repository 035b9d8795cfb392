"""What a `redrive` run does before sending: the objects under the location, the job's
checkpoint checked against them, and the preflight pass (the report, Moesif's 30-day rule).

Progress is kept per object in the job's `JobState` (`FileProgress`, identity {key, etag,
size}); chunk i of an object is its lines [i*C+1, (i+1)*C] (C: the object's `chunk_rows`, fixed
when it was first read), so a rerun finds the same chunks. `split_line` decides, for one line,
what is sent, rejected, outside the window or left pending as too old; the runner
(pipeline/redrive.py) and the preflight pass use it alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from connectors.checkpoint import CheckpointStore, FileProgress, JobState, TimeWindow
from connectors.s3_listing import ObjectInfo
from moesif_backfill.errors import CheckpointMismatchError, PreflightError
from pipeline.late_window import refusal_message
from pipeline.redrive_report import Report, iso_us
from pipeline.redrive_settings import RedriveSettings
from transforms.failed_records import Action, Line, Rejected, decode_object

FINGERPRINT = "redrive-failed-deliveries/1"


@dataclass
class RedrivePlan:
    job: str
    location: str
    objects: list[ObjectInfo]
    state: JobState
    cutoff_us: int  # actions whose request.time is before this are older than 30 days
    report: Report = field(default_factory=Report)
    actions_total: int = 0  # the progress total: actions of the objects this run reads
    warnings: list[str] = field(default_factory=list)


def identity(info: ObjectInfo) -> dict[str, int | str]:
    return {"key": info.url, "etag": info.etag, "size": info.size}


def progress_of(plan: RedrivePlan, info: ObjectInfo, chunk_rows: int) -> FileProgress:
    prog = plan.state.files.get(info.url)
    if prog is None:
        prog = FileProgress(identity=identity(info), chunk_rows=chunk_rows)
        plan.state.files[info.url] = prog
    return prog


def load_redrive_state(
    s: RedriveSettings, store: CheckpointStore | None, job: str, objects: list[ObjectInfo]
) -> JobState:
    """The job's state (new for a dry-run or --reset), checked: the same kind of job, the same
    --since/--until, and no object changed since it was (partly) delivered."""
    window = TimeWindow.of(s.since, s.until)
    state = store.load(job) if store is not None and not s.reset else None
    if state is None:
        return JobState.new(job, FINGERPRINT).model_copy(update={"window": window})
    where = store.describe() if store is not None else ""
    if state.mapping_fingerprint != FINGERPRINT:
        raise CheckpointMismatchError(
            f"job {job!r} at {where} is not a redrive job (a `run` job of the same name?); "
            "give redrive its own --job name"
        )
    if state.window is not None and state.files and not state.window.same_instants(window):
        raise CheckpointMismatchError(
            f"job {job!r} was redriven with {state.window.describe()}; this run asks for "
            f"{window.describe()}. Its committed chunks did not send the lines outside the old "
            "window, so resuming under another one would leave them undelivered. Rerun with the "
            "old --since/--until, or use a new --job name (Moesif deduplicates actions already "
            "delivered: they keep their transaction_id), or --reset."
        )
    state.window = window
    changed = [
        o.url
        for o in objects
        if o.url in state.files and state.files[o.url].identity != identity(o)
    ]
    if changed:
        shown = "\n  ".join(changed[:10])
        raise CheckpointMismatchError(
            f"job {job!r}: {len(changed)} failed-delivery object(s) changed (new ETag or size) "
            f"since they were (partly) redriven:\n  {shown}\nFirehose never rewrites them, so "
            "this is not expected; nothing was sent. Check the objects, then rerun with a new "
            "--job name or --reset (Moesif deduplicates actions already delivered)."
        )
    return state


def chunk_count(lines: list[Line], chunk_rows: int) -> int:
    last = lines[-1].number if lines else 0
    return -(-last // chunk_rows)


def chunk_lines(lines: list[Line], chunk_rows: int) -> list[list[Line]]:
    """The lines of each chunk (a chunk may hold none: blank lines)."""
    chunks: list[list[Line]] = [[] for _ in range(chunk_count(lines, chunk_rows))]
    for line in lines:
        chunks[(line.number - 1) // chunk_rows].append(line)
    return chunks


@dataclass
class LineSplit:
    """What becomes of one line's actions (each action of the line in exactly one list; an
    undecodable line is one rejected action)."""

    send: list[Action] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    too_old: list[Action] = field(default_factory=list)
    outside: int = 0  # actions of a line outside --since/--until


def split_line(
    line: Line, window: tuple[int | None, int | None] | None, skip_before_us: int | None
) -> LineSplit:
    """`skip_before_us`: actions older than this are left pending (--skip-older-than-30-days)."""
    out = LineSplit()
    if window is not None:
        if line.arrival_ms is None and not line.line_rejected:
            why = "no arrivalTimestamp (epoch ms) to apply --since/--until to"
            out.rejected = [Rejected(why, None, "")] * line.count
            return out
        low, high = window
        arrival = line.arrival_ms
        if arrival is not None and (
            (low is not None and arrival < low) or (high is not None and arrival >= high)
        ):
            out.outside = line.count
            return out
    out.rejected = list(line.rejected)
    for action in line.actions:
        t = action.time_us
        old = skip_before_us is not None and t is not None and t < skip_before_us
        (out.too_old if old else out.send).append(action)
    return out


def preflight(s: RedriveSettings, plan: RedrivePlan, read: Callable[[ObjectInfo], bytes]) -> None:
    """One pass over the objects this run reads (not those an earlier run completed): the
    report, the progress total, and Moesif's 30-day rule (PreflightError, nothing sent, unless
    --allow-older-than-30-days or --skip-older-than-30-days)."""
    window = s.window_ms
    deferred = earlier = 0  # pending as too old (`earlier`: left so by an earlier run)
    for info in plan.objects:
        prog = plan.state.files.get(info.url)
        if prog is not None:
            earlier += prog.rows_deferred
            if prog.delivered or (prog.complete and not s.allow_older_than_30_days):
                plan.actions_total += prog.rows_sent + prog.rows_rejected
                plan.actions_total += prog.rows_outside_window + prog.rows_deferred
                continue
        chunk_rows = prog.chunk_rows if prog is not None else s.chunk_rows
        for index, lines in enumerate(chunk_lines(decode_object(read(info)), chunk_rows)):
            pending = prog is None or not prog.is_done(index)
            for line in lines:
                plan.report.add(line)
                plan.actions_total += line.count
                split = split_line(line, window, None)
                for action in split.send:
                    if action.time_us is not None and action.time_us < plan.cutoff_us:
                        plan.report.old(action.time_us)
                        if pending:
                            deferred += 1
    if plan.report.older_than_30_days:
        plan.warnings.append(
            f"{plan.report.older_than_30_days:,} action(s) are more than 30 days old (oldest "
            f"{iso_us(plan.report.oldest_us)}): Moesif rejects them unless your account is "
            "enabled for backfill"
        )
    refuse = not (s.allow_older_than_30_days or s.skip_older_than_30_days)
    if refuse and s.mode == "send" and (deferred or earlier):
        old = deferred + earlier
        raise PreflightError(refusal_message(old, plan.report.oldest_us, earlier, "action"))


def keep_reason(prog: FileProgress) -> str:
    """Why an object must not be deleted ("" when every action of it was delivered)."""
    reasons = []
    if not prog.complete:
        reasons.append("not every chunk of it was delivered")
    if prog.rows_rejected:
        reasons.append(f"{prog.rows_rejected:,} rejected action(s)/line(s): see the rejects file")
    if prog.rows_outside_window:
        reasons.append(f"{prog.rows_outside_window:,} action(s) outside --since/--until")
    if prog.rows_deferred:
        reasons.append(f"{prog.rows_deferred:,} action(s) pending as older than 30 days")
    return "; ".join(reasons)


__all__ = [
    "FINGERPRINT",
    "LineSplit",
    "RedrivePlan",
    "chunk_count",
    "chunk_lines",
    "identity",
    "keep_reason",
    "load_redrive_state",
    "preflight",
    "progress_of",
    "split_line",
]
