"""Preflight: everything that can be checked before the first record is sent.

`make_plan` loads the mapping, lists the inputs, binds the mapping to each file's schema, loads
the job's checkpoint and compares it with the inputs and the mapping, and (unless allowed)
checks Moesif's 30-day window. Any problem is a `ConfigError` (exit 2) raised here, when
nothing has been sent yet.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from connectors.checkpoint import CheckpointStore, FileProgress, JobState
from connectors.readers import iter_batches, read_schema
from connectors.sources import SourceFile, discover_sources
from flows.settings import RunSettings
from moesif_backfill.errors import (
    CheckpointMismatchError,
    ConfigError,
    MappingError,
    PreflightError,
    SourceError,
)
from transforms.actions import time_bounds
from transforms.mapping import (
    ColumnSource,
    MappingSpec,
    ResolvedMapping,
    load_mapping,
    resolve_mapping,
)

log = logging.getLogger(__name__)

MOESIF_LATE_WINDOW = dt.timedelta(days=30)


@dataclass
class FilePlan:
    src: SourceFile
    resolved: ResolvedMapping
    text_columns: list[str]
    rows_estimate: int | None
    # CSV metadata-only columns inferred as floating point, read as the text of each number so
    # that the action keeps every digit written (a double would round 0.123456789012345678).
    number_columns: list[str] = field(default_factory=list)

    def number_text_fields(self) -> list[str]:
        """`number_columns` under the mapping's (logical) column names."""
        return [c for c, phys in self.resolved.columns.items() if phys in self.number_columns]


@dataclass
class Plan:
    settings: RunSettings
    spec: MappingSpec
    job: str
    files: list[FilePlan]
    state: JobState
    old_rows: int = 0
    oldest_us: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def rows_estimate(self) -> int | None:
        ests = [f.rows_estimate for f in self.files]
        return None if any(e is None for e in ests) else sum(e or 0 for e in ests)


def default_job_name(settings: RunSettings) -> str:
    """A stable job name from the source list and the mapping file's path (not its content,
    so that editing the mapping is detected as a change rather than starting a new job)."""
    parts = sorted(os.path.abspath(s) if "://" not in s else s for s in settings.sources)
    parts.append(os.path.abspath(settings.mapping))
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
    return f"backfill-{digest}"


def _rows_estimate(src: SourceFile) -> int | None:
    if src.format != "parquet" or "://" in src.path:
        return None
    try:
        return int(pq.ParquetFile(src.path).metadata.num_rows)
    except (OSError, pa.ArrowException):
        return None


def _bind(spec: MappingSpec, src: SourceFile) -> FilePlan:
    schema = read_schema(src)
    resolved = resolve_mapping(spec, schema, origin=src.path)
    text_cols: list[str] = []
    if src.format in ("csv", "ndjson"):
        # Key columns are read as text exactly as written (ID contract v1: no type guessing).
        text_cols = [resolved.columns[c] for c in spec.key_columns()]
    number_cols = _csv_number_columns(spec, resolved, text_cols) if src.format == "csv" else []
    return FilePlan(
        src=src,
        resolved=resolved,
        text_columns=text_cols,
        rows_estimate=None,
        number_columns=number_cols,
    )


def _csv_number_columns(
    spec: MappingSpec, resolved: ResolvedMapping, text_cols: list[str]
) -> list[str]:
    """CSV columns used only as metadata and inferred as floating point: read as text, sent
    as JSON numbers with the digits written. Columns that other fields also read keep their
    type (canon() of a double for string fields, epochs for the time)."""
    fields = [spec.action_name, *spec.string_fields().values(), *spec.request_fields().values()]
    other = [src.column for src in fields if isinstance(src, ColumnSource)]
    other_phys = {resolved.columns[c] for c in [*other, spec.time.column, *spec.key_columns()]}
    meta = [src.column for src in spec.metadata.values() if isinstance(src, ColumnSource)]
    numbers = []
    for phys in dict.fromkeys(resolved.columns[c] for c in meta):
        typ = resolved.schema.field(phys).type
        if pa.types.is_floating(typ) and phys not in other_phys and phys not in text_cols:
            numbers.append(phys)
    return numbers


def make_plan(settings: RunSettings, store: CheckpointStore | None) -> Plan:
    spec = load_mapping(settings.mapping)
    try:
        sources = discover_sources(settings.sources)
    except SourceError as exc:
        raise ConfigError(str(exc)) from None
    files = []
    for src in sources:
        try:
            fp = _bind(spec, src)
        except SourceError as exc:
            raise ConfigError(str(exc)) from None
        fp.rows_estimate = _rows_estimate(src)
        files.append(fp)
    job = settings.job or default_job_name(settings)
    fingerprint = spec.fingerprint()
    state = _load_state(settings, store, job, fingerprint, files)
    plan = Plan(settings=settings, spec=spec, job=job, files=files, state=state)
    check_late_window(plan)
    return plan


def _load_state(
    settings: RunSettings,
    store: CheckpointStore | None,
    job: str,
    fingerprint: str,
    files: list[FilePlan],
) -> JobState:
    state = None
    if store is not None and not (settings.reset and settings.mode == "send"):
        state = store.load(job)
    if state is None:
        return JobState.new(job, fingerprint)
    where = store.describe() if store else ""
    if state.mapping_fingerprint != fingerprint:
        raise CheckpointMismatchError(
            f"job {job!r}: the mapping changed since this job's checkpoint was written "
            f"({where}); that would change transaction_ids or payloads of rows already "
            "delivered. Restore the old mapping to resume, or rerun with --reset to start the "
            "job over (Moesif deduplicates rows whose transaction_id is unchanged), or use a "
            "new --job name."
        )
    reprocess = {os.path.abspath(p) if "://" not in p else p for p in settings.reprocess}
    changed = []
    for fp in files:
        prog = state.files.get(fp.src.key)
        if prog is None:
            continue
        if fp.src.key in reprocess:
            del state.files[fp.src.key]
            continue
        if prog.identity != fp.src.identity():
            changed.append(fp.src.key)
    if changed:
        shown = "\n  ".join(changed[:10])
        raise CheckpointMismatchError(
            f"job {job!r}: {len(changed)} input file(s) changed since they were (partly) "
            f"delivered:\n  {shown}\nRows already delivered from them would be skipped by "
            "position, which is no longer safe. Rerun with --reprocess FILE for each changed "
            "file (its rows are sent again; unchanged rows keep their transaction_id, so "
            "Moesif deduplicates them), or --reset to start the whole job over."
        )
    return state


def file_progress(plan: Plan, fp: FilePlan) -> FileProgress:
    prog = plan.state.files.get(fp.src.key)
    if prog is None:
        prog = FileProgress(identity=fp.src.identity(), chunk_rows=plan.settings.chunk_rows)
        plan.state.files[fp.src.key] = prog
    return prog


def check_late_window(plan: Plan, *, now: dt.datetime | None = None) -> None:
    """Count rows older than Moesif's 30-day window; stop unless the user allowed them."""
    settings = plan.settings
    if settings.allow_older_than_30_days and settings.mode != "validate":
        return
    now = now or dt.datetime.now(dt.UTC)
    cutoff_us = int((now - MOESIF_LATE_WINDOW).timestamp() * 1_000_000)
    old, oldest = 0, None
    for fp in plan.files:
        prog = plan.state.files.get(fp.src.key)
        if prog is not None and prog.complete:
            continue
        time_col = fp.resolved.columns[plan.spec.time.column]
        try:
            for batch in iter_batches(fp.src, columns=[time_col]):
                us, _bad = time_bounds(batch.column(0), plan.spec)
                is_old = np.asarray(
                    pc.fill_null(pc.less(us, cutoff_us), False).to_numpy(zero_copy_only=False)
                )
                n_old = int(is_old.sum())
                if n_old:
                    old += n_old
                    low = pc.min(us).as_py()
                    oldest = low if oldest is None else min(oldest, low)
        except SourceError as exc:
            raise ConfigError(str(exc)) from None
    plan.old_rows, plan.oldest_us = old, oldest
    if old and not settings.allow_older_than_30_days and settings.mode != "validate":
        oldest_text = dt.datetime.fromtimestamp((oldest or 0) / 1e6, dt.UTC).isoformat()
        raise PreflightError(
            f"{old:,} row(s) are more than 30 days old (oldest: {oldest_text}). Moesif's "
            "Collector rejects events older than 30 days unless your Moesif account is enabled "
            "for backfill. Ask Moesif to enable historical import for your application, then "
            "rerun with --allow-older-than-30-days. Nothing was sent."
        )


__all__ = ["FilePlan", "MappingError", "Plan", "file_progress", "make_plan"]
