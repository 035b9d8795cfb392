"""Preflight: everything that can be checked before the first record is sent.

`make_plan` loads the mapping, lists the inputs, loads the job's checkpoint and compares it with
the inputs and the mapping (pipeline/job_state.py), binds the mapping to each file's schema
(pipeline/binding.py: text files: which columns are read as text and which metadata columns go
out as numbers, decided from the whole file before its first row is sent), checks a manifest's
record counts, and (unless allowed) checks Moesif's 30-day window (pipeline/late_window.py). Any
problem is a `ConfigError` (exit 2) raised here, when nothing has been sent yet.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field

import pyarrow as pa

from connectors.checkpoint import CheckpointStore, FileProgress, JobState
from connectors.discovery import discover_sources
from connectors.layouts import count_rows
from connectors.readers import parquet_num_rows
from connectors.s3_store import S3Store
from connectors.source_file import SourceFile
from moesif_backfill.errors import ConfigError, MappingError, SourceError
from pipeline.binding import bind_all, inspect_file
from pipeline.file_plan import FilePlan
from pipeline.job_state import load_state, reprocess_keys
from pipeline.late_window import check_late_window
from pipeline.layout import ShardLayout, load_layout
from pipeline.settings import RunSettings
from transforms.mapping import MappingSpec, load_mapping
from transforms.source_options import SourceOptions

log = logging.getLogger(__name__)


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
    warnings: list[str] = field(default_factory=list)  # shown by `validate`
    s3: S3Store | None = None  # the run's S3 access (s3:// sources), passed to the readers
    # Keys of the files an earlier run delivered completely (their shards all complete, or,
    # in a checkpoint of b96172b's single-process layout, their progress): not read again.
    # Without --allow-older-than-30-days, also those whose only pending rows are too old.
    complete: set[str] = field(default_factory=set)
    # --skip-older-than-30-days: rows before this instant (epoch µs; 30 days before the run's
    # start) are not sent but left pending (engine: deferred); None: no such rows are skipped.
    too_old_before_us: int | None = None

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
    """The progress bar's total: a local Parquet footer's row count (no extra S3 requests)."""
    if src.format != "parquet" or "://" in src.path:
        return None
    try:
        return parquet_num_rows(src)
    except (SourceError, OSError, pa.ArrowException):
        return None


def _check_manifest_counts(plan: Plan) -> None:
    """Every file a manifest lists must have the record count it states (read before anything
    is sent: the Parquet footer, or a pass over one column of a text file)."""
    for fp in plan.files:
        expected = fp.src.layout.expected_rows
        if expected is None or fp.src.key in plan.complete:
            continue
        try:
            actual = count_rows(fp.src, fp.options, plan.s3)
        except SourceError as exc:
            raise ConfigError(str(exc)) from None
        # Redshift counts the header line of an UNLOAD ... HEADER in record_count.
        header = fp.src.format == "csv" and (fp.options or SourceOptions()).has_header
        if actual + int(header) != expected:
            counted = " (+1 header line)" if header else ""
            raise ConfigError(
                f"{fp.src.layout.manifest}: manifest entry {fp.src.path} should hold {expected:,} "
                f"record(s) (meta.record_count) but holds {actual:,}{counted}; nothing was sent. "
                "The file is incomplete or was replaced after the export: export again, or fix "
                "the manifest."
            )


def make_plan(
    settings: RunSettings, store: CheckpointStore | None, *, s3: S3Store | None = None
) -> Plan:
    """The run's plan; `s3`: the run's S3 access, needed for s3:// sources (kept in the plan
    for the readers). Only a send consults the job's checkpoint (`store`): a dry-run or a
    validate previews the whole input, whatever an earlier run delivered."""
    if settings.mode != "send":
        store = None
    spec = load_mapping(settings.mapping)
    notes: list[str] = []
    try:
        sources = discover_sources(settings.sources, spec.source, s3=s3, exclude=settings.exclude)
        seen = [inspect_file(spec, src, s3) for src in sources]
    except SourceError as exc:
        raise ConfigError(str(exc)) from None
    job = settings.job or default_job_name(settings)
    fingerprint = spec.fingerprint()
    layout = ShardLayout()
    if store is not None and not (settings.reset and settings.mode == "send"):
        layout = load_layout(store, job)
    state = load_state(settings, store, job, fingerprint, sources, has_shards=bool(layout.files))
    complete = {key for key, prog in state.files.items() if prog.complete}
    reprocess = reprocess_keys(settings)
    identities = {src.key: src.identity() for src in sources}
    # Files whose rows left pending as too old are sent now are read again; otherwise those
    # rows stay pending without reading the file (and count as old rows, below).
    deferred_ok = not settings.allow_older_than_30_days
    complete |= {
        key
        for key, identity in layout.complete_files(deferred_ok=deferred_ok).items()
        if key not in reprocess and identities.get(key) == identity
    }
    deferred = sum(layout.rows_deferred(key) for key in complete if key in layout.files)
    try:
        files = bind_all(spec, seen, notes, complete, s3)
    except SourceError as exc:
        raise ConfigError(str(exc)) from None
    for fp in files:
        fp.rows_estimate = _rows_estimate(fp.src)
    plan = Plan(settings=settings, spec=spec, job=job, files=files, state=state, notes=notes, s3=s3)
    plan.complete = complete
    plan.warnings = mapping_warnings(spec)
    for note in notes:
        log.info("%s", note)
    _check_manifest_counts(plan)
    late = check_late_window(settings, spec, files, complete=complete, s3=s3, deferred=deferred)
    plan.old_rows, plan.oldest_us = late.count, late.oldest_us
    if settings.skip_older_than_30_days:
        plan.too_old_before_us = late.cutoff_us
    return plan


def mapping_warnings(spec: MappingSpec) -> list[str]:
    """What the mapping leaves out that Moesif may want (`validate` shows these)."""
    if spec.request.uri is not None:
        return []
    return [
        "no request.uri is mapped: Moesif's Actions API reference marks request.uri as "
        "required (the full URL the customer was on; its Firehose guide's example omits it). "
        "Add a constant to the mapping, e.g. request: {uri: {value: "
        '"https://billing.example.com/payments"}}, or a column: request: {uri: COLUMN}.'
    ]


def file_progress(plan: Plan, fp: FilePlan) -> FileProgress:
    prog = plan.state.files.get(fp.src.key)
    if prog is None:
        prog = FileProgress(identity=fp.src.identity(), chunk_rows=plan.settings.chunk_rows)
        plan.state.files[fp.src.key] = prog
    return prog


__all__ = [
    "FilePlan",
    "MappingError",
    "Plan",
    "default_job_name",
    "file_progress",
    "make_plan",
    "reprocess_keys",
]
