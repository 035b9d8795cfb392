"""Preflight: everything that can be checked before the first record is sent.

`make_plan` loads the mapping, lists the inputs, loads the job's checkpoint and compares it with
the inputs and the mapping, binds the mapping to each file's schema (text files: which columns
are read as text and which metadata columns go out as numbers, decided from the whole file before
its first row is sent, see `_type_text_columns`), and (unless allowed) checks Moesif's 30-day
window. Any problem is a `ConfigError` (exit 2) raised here, when
nothing has been sent yet.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from connectors.checkpoint import CheckpointStore, FileProgress, JobState, TimeWindow
from connectors.discovery import discover_sources
from connectors.layouts import (
    NO_CHANGES,
    FileRead,
    count_rows,
    file_schema,
    holds_only_nulls,
    iter_file_batches,
)
from connectors.readers import parquet_num_rows, scan_number_columns
from connectors.s3_store import S3Store
from connectors.schema_drift import FileColumns, unify_types
from connectors.source_file import SourceFile
from moesif_backfill.errors import (
    CheckpointMismatchError,
    ConfigError,
    MappingError,
    PreflightError,
    SourceError,
)
from pipeline.day_window import outside_mask, window_us
from pipeline.layout import ShardLayout, load_layout
from pipeline.settings import RunSettings
from transforms.actions import time_bounds
from transforms.mapping import MappingSpec, load_mapping
from transforms.schema_match import (
    ResolvedMapping,
    check_time_type,
    find_columns,
    required_columns,
    resolve_mapping,
)
from transforms.source_options import SourceOptions

log = logging.getLogger(__name__)

MOESIF_LATE_WINDOW = dt.timedelta(days=30)


@dataclass
class FilePlan:
    src: SourceFile
    resolved: ResolvedMapping
    # Text formats: columns read as text exactly as written (see _type_text_columns).
    text_columns: list[str]
    rows_estimate: int | None
    # Text formats: metadata columns whose values are all JSON numbers, read as the text of
    # each so that the action keeps every digit written (a double would round
    # 0.123456789012345678); decided before the file's first row is sent.
    number_columns: list[str] = field(default_factory=list)
    # The mapping's `source:` section, and what connectors.layouts adds to the file's own
    # columns: partition values, nulls for columns only other files have, unified types.
    options: SourceOptions | None = None
    read: FileRead = NO_CHANGES
    # A shard of a Parquet file (pipeline/shards.py): only row groups [a, b) are read.
    row_groups: tuple[int, int] | None = None

    def number_text_fields(self) -> list[str]:
        """`number_columns` under the mapping's (logical) column names."""
        return [c for c, phys in self.resolved.columns.items() if phys in self.number_columns]

    def batches(
        self,
        columns: Sequence[str] | None = None,
        *,
        batch_rows: int = 65_536,
        s3: S3Store | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """The file's rows as the mapping reads them: `columns` (the file's names, as in
        `resolved.columns`; default: every column the mapping uses), same schema in every
        batch, at most `batch_rows` rows each."""
        return iter_file_batches(
            self.src,
            columns=list(columns) if columns is not None else self.resolved.physical_columns(),
            read=self.read,
            text_columns=self.text_columns,
            number_columns=self.number_columns,
            batch_rows=batch_rows,
            options=self.options,
            row_groups=self.row_groups,
            s3=s3,
        )


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
    complete: set[str] = field(default_factory=set)

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


@dataclass
class _Seen:
    """One file as found: its columns (own + partitions) and the mapping's columns in it."""

    src: SourceFile
    schema: pa.Schema  # as the file's first block shows it (text formats: inferred types)
    columns: dict[str, str]  # mapping column -> the file's column
    missing: dict[str, MappingError]  # mapping columns the file does not have
    partitions: dict[str, str | None]  # partition columns (not those the file also has)
    # Text formats (mapping column names): read as text whatever the values look like; of the
    # metadata columns, those whose values go out as JSON numbers with the digits written, and
    # those a pass over the whole file found text in (CSV).
    text: frozenset[str] = frozenset()
    number_text: frozenset[str] = frozenset()
    found_text: frozenset[str] = frozenset()
    as_text: frozenset[str] = frozenset()  # inferred columns read as text (schema drift)

    @property
    def is_text(self) -> bool:
        return self.src.format in ("csv", "ndjson")

    def own(self, name: str) -> bool:
        """Whether the file itself has the mapping column `name` (not a partition value)."""
        phys = self.columns.get(name)
        return phys is not None and phys not in self.partitions


def _inspect(spec: MappingSpec, src: SourceFile, s3: S3Store | None) -> _Seen:
    schema, clashes = file_schema(src, spec.source, s3)
    columns, missing = find_columns(spec, schema, origin=src.path)
    clash = sorted(c for c in clashes if c in columns.values())
    if clash:
        value = src.layout.partition_values()[clash[0]]
        raise MappingError(
            f"{src.path}: {clash[0]!r} is both a column of the file and a partition directory "
            f"({clash[0]}={value}/) above it, and the mapping uses it; a partition value never "
            "overrides a column. Rename the column or the directory level, give the input "
            "below that directory, or (Redshift) unload with PARTITION BY but without INCLUDE."
        )
    partitions = {n: v for n, v in src.layout.partitions if n not in clashes}
    return _Seen(src, schema, columns, missing, partitions)


def _type_text_columns(spec: MappingSpec, s: _Seen, *, complete: bool, s3: S3Store | None) -> None:
    """How a text file's mapped columns are read (no type is guessed into another value):

    - key columns, the string fields' columns (action_name, company_id, user_id,
      subscription_id, session_token, request.*), metadata columns with a `type:` and the
      time column are read as text, exactly as written (an NDJSON time column that holds
      JSON numbers keeps them: epochs);
    - CSV metadata columns (other than booleans and times the first block shows) are typed by
      a pass over the whole file before anything is sent: JSON numbers (sent with the digits
      written) when every value is written as one, else text (strings as written). A file
      already delivered completely is not read again (its rows are not sent);
    - NDJSON metadata fields whose values are JSON numbers are read as the text of each
      number (its digits); JSON keeps every other value's own type.
    """
    if not s.is_text:
        return
    own = [n for n in spec.referenced_columns() if s.own(n)]
    kind = {n: s.schema.field(s.columns[n]).type for n in own}
    text = {*spec.key_columns(), *spec.text_field_columns(), *spec.metadata_columns(typed=True)}
    if s.src.format == "csv" or not _is_number(kind.get(spec.time.column)):
        text.add(spec.time.column)
    text &= set(own)
    metadata = [n for n in spec.metadata_columns(typed=False) if n in kind]
    if s.src.format == "csv":
        candidates = [n for n in metadata if n in text or _number_or_text(kind[n])]
        numbers = set(candidates)
        if not complete:
            found = scan_number_columns(
                s.src, [s.columns[n] for n in candidates], spec.source, s3=s3
            )
            numbers = {n for n in candidates if s.columns[n] in found}
        s.found_text = frozenset(set(candidates) - numbers)
        text |= s.found_text
    else:
        numbers = {n for n in metadata if n not in text and _is_number(kind[n])}
    s.text, s.number_text = frozenset(text - numbers), frozenset(numbers)


def _is_number(t: pa.DataType | None) -> bool:
    return t is not None and (pa.types.is_integer(t) or pa.types.is_floating(t))


def _number_or_text(t: pa.DataType) -> bool:
    """A type the CSV reader infers for numbers or text (not booleans, dates or times)."""
    return _is_number(t) or pa.types.is_string(t) or pa.types.is_null(t)


def _bind_all(
    spec: MappingSpec,
    seen: list[_Seen],
    notes: list[str],
    complete: set[str],
    s3: S3Store | None,
) -> list[FilePlan]:
    """Bind the mapping to every file with one type per column across files (schema drift,
    connectors.schema_drift); MappingError when a column is absent where it is needed or its
    types cannot be unified. Files in `complete` were delivered completely by an earlier run."""
    _check_missing_columns(spec, seen, notes)
    for s in seen:
        _type_text_columns(spec, s, complete=s.src.key in complete, s3=s3)
    keys = set(spec.key_columns())
    unforced = set(spec.metadata_columns(typed=False))
    as_is = {*spec.text_field_columns(), *spec.metadata_columns(typed=True)} - unforced
    unified = unify_types(
        [_file_columns(spec, s, keys) for s in seen],
        keys=keys,
        time_column=spec.time.column,
        holds_only_nulls=lambda i, name: (
            name not in seen[i].found_text
            and holds_only_nulls(seen[i].src, seen[i].columns[name], spec.source, s3)
        ),
        as_is=as_is,
    )
    for i, names in unified.as_text.items():
        seen[i].as_text = names
    return [_bind(spec, s, unified.types) for s in seen]


def _check_missing_columns(spec: MappingSpec, seen: list[_Seen], notes: list[str]) -> None:
    """A mapped column absent from some input files stops the run (MappingError, exit 2)
    naming those files, unless every field reading it says `if_missing: omit`; the time and
    transaction_id columns are needed in every file."""
    required = set(required_columns(spec))
    fields = spec.column_fields()
    for name in spec.referenced_columns():
        absent = [s for s in seen if name in s.missing]
        if not absent:
            continue
        users = {label: src for label, src in fields.items() if src.column == name}
        optional = name not in required and all(src.if_missing for src in users.values())
        if optional:
            notes.append(
                f"column {name!r} is missing from {len(absent)} of {len(seen)} file(s) (e.g. "
                f"{absent[0].src.path}): their rows are sent without {', '.join(users)} "
                "(if_missing: omit)"
            )
            continue
        if len(absent) == len(seen) or name in required:
            raise _with_header_hint(spec, absent[0], absent[0].missing[name])
        shown = "\n  ".join(s.src.path for s in absent[:10])
        more = f"\n  ... and {len(absent) - 10} more" if len(absent) > 10 else ""
        raise MappingError(
            f"column {name!r} ({', '.join(users)}) is missing from {len(absent)} of {len(seen)} "
            f"input file(s):\n  {shown}{more}\nTheir rows would be sent without "
            f"{', '.join(users)}. Nothing was sent. If that is right (an older export without "
            f"the column), say so in the mapping: set {' and '.join(users)} to "
            f"{{column: {name}, if_missing: omit}}; otherwise fix the export or leave those "
            "files out."
        )


def _file_columns(spec: MappingSpec, s: _Seen, keys: set[str]) -> FileColumns:
    types: dict[str, pa.DataType | None] = {}
    inferred = set()
    for name in spec.referenced_columns():
        phys = s.columns.get(name)
        if phys is None:
            types[name] = None
            continue
        # Key columns of text formats are read as text exactly as written (ID contract v1);
        # a metadata column a pass over the file found text in is text.
        t = s.schema.field(phys).type
        text = (s.is_text and name in keys) or name in s.found_text
        types[name] = pa.string() if text else t
        if s.is_text and phys not in s.partitions:
            inferred.add(name)
    return FileColumns(s.src.path, types, frozenset(inferred), s.number_text)


def _bind(spec: MappingSpec, s: _Seen, unified: dict[str, pa.DataType]) -> FilePlan:
    src = s.src
    types: dict[str, pa.DataType] = {}
    fields = {f.name: f for f in s.schema}
    names = [n for n in spec.referenced_columns() if n in s.columns]  # a stable order
    text_cols = list(dict.fromkeys(s.columns[n] for n in names if n in s.text | s.as_text))
    number_cols = list(dict.fromkeys(s.columns[n] for n in names if n in s.number_text))
    for name in spec.referenced_columns():
        target = unified.get(name)
        phys = s.columns.get(name)
        if phys is None:  # only other files have it: nulls of the unified type
            fields[name] = pa.field(name, target or pa.string())
            types[name] = target or pa.string()
        elif phys in text_cols or phys in number_cols:  # read as written: never cast
            fields[phys] = fields[phys].with_type(pa.string())
        elif target is not None and not fields[phys].type.equals(target):
            fields[phys] = fields[phys].with_type(target)
            types[phys] = target
    resolved = resolve_mapping(spec, pa.schema(list(fields.values())), origin=src.path)
    if spec.time.column in s.text:  # the type the time text looks like (epochs need a unit)
        check_time_type(spec, s.schema.field(s.columns[spec.time.column]).type, src.path)
    return FilePlan(
        src=src,
        resolved=resolved,
        text_columns=text_cols,
        rows_estimate=None,
        number_columns=number_cols,
        options=spec.source,
        read=FileRead(
            partitions=s.partitions,
            missing=frozenset(s.missing),
            types=types,
        ),
    )


def _with_header_hint(spec: MappingSpec, s: _Seen, exc: MappingError) -> MappingError:
    if s.src.format != "csv" or spec.source.header is not None or spec.source.columns:
        return exc
    return MappingError(
        f"{exc} If the file has no header row (Snowflake and Redshift unloads have none by "
        "default), give the column names in the mapping file: source: {header: false, "
        "columns: [...]} (see docs/warehouse-exports.md)."
    )


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
    for the readers)."""
    spec = load_mapping(settings.mapping)
    notes: list[str] = []
    try:
        sources = discover_sources(settings.sources, spec.source, s3=s3, exclude=settings.exclude)
        seen = [_inspect(spec, src, s3) for src in sources]
    except SourceError as exc:
        raise ConfigError(str(exc)) from None
    job = settings.job or default_job_name(settings)
    fingerprint = spec.fingerprint()
    layout = ShardLayout()
    if store is not None and not (settings.reset and settings.mode == "send"):
        layout = load_layout(store, job)
    state = _load_state(settings, store, job, fingerprint, sources, has_shards=bool(layout.files))
    complete = {key for key, prog in state.files.items() if prog.complete}
    reprocess = reprocess_keys(settings)
    identities = {src.key: src.identity() for src in sources}
    complete |= {
        key
        for key, identity in layout.complete_files().items()
        if key not in reprocess and identities.get(key) == identity
    }
    try:
        files = _bind_all(spec, seen, notes, complete, s3)
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
    check_late_window(plan)
    return plan


def _load_state(
    settings: RunSettings,
    store: CheckpointStore | None,
    job: str,
    fingerprint: str,
    sources: list[SourceFile],
    *,
    has_shards: bool = False,
) -> JobState:
    state = None
    if store is not None and not (settings.reset and settings.mode == "send"):
        state = store.load(job)
    window = TimeWindow.of(settings.window_start, settings.window_end)
    if state is None:
        return JobState.new(job, fingerprint).model_copy(update={"window": window})
    where = store.describe() if store else ""
    if state.mapping_fingerprint != fingerprint:
        raise CheckpointMismatchError(
            f"job {job!r}: the mapping changed since this job's checkpoint was written "
            f"({where}); that would change transaction_ids or payloads of rows already "
            "delivered. Restore the old mapping to resume, or rerun with --reset to start the "
            "job over (Moesif deduplicates rows whose transaction_id is unchanged), or use a "
            "new --job name."
        )
    _check_window(state, window, where, has_shards)
    reprocess = reprocess_keys(settings)
    changed = []
    for src in sources:
        prog = state.files.get(src.key)
        if prog is None:
            continue
        if src.key in reprocess:
            del state.files[src.key]
            continue
        if prog.identity != src.identity():
            changed.append(src.key)
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


def _check_window(
    state: JobState, window: TimeWindow, where: str, has_shards: bool = False
) -> None:
    """A job's chunks were committed under one time window; refuse another (a nightly day run
    in one time zone, then a range over the same day in another, would skip committed chunks
    that hold only the first window's rows). A checkpoint without a recorded window (written
    before windows were recorded) takes on this run's."""
    if state.window is None or (state.files == {} and not has_shards):
        state.window = window
        return
    if state.window.same_instants(window):
        return
    raise CheckpointMismatchError(
        f"job {state.job!r} was checkpointed with {state.window.describe()} ({where}); this run "
        f"asks for {window.describe()}. Its committed chunks hold only the rows inside the old "
        "window, so resuming under another one would leave rows undelivered. Rerun with the "
        "settings that made the old window (for a day job: the same --timezone and --window as "
        "before), or rerun with --reset to send the job again under the new window (Moesif "
        "deduplicates rows already delivered), or use a new --job name."
    )


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


def reprocess_keys(settings: RunSettings) -> set[str]:
    """The `--reprocess FILE` inputs as source keys (local paths made absolute)."""
    return {os.path.abspath(p) if "://" not in p else p for p in settings.reprocess}


def file_progress(plan: Plan, fp: FilePlan) -> FileProgress:
    prog = plan.state.files.get(fp.src.key)
    if prog is None:
        prog = FileProgress(identity=fp.src.identity(), chunk_rows=plan.settings.chunk_rows)
        plan.state.files[fp.src.key] = prog
    return prog


def check_late_window(plan: Plan, *, now: dt.datetime | None = None) -> None:
    """Count rows older than Moesif's 30-day window; stop unless the user allowed them.

    With a time window (RunSettings.window_start/_end) only rows inside it count: the others
    are not sent by this run."""
    settings = plan.settings
    window = window_us(settings)
    if settings.allow_older_than_30_days and settings.mode != "validate":
        return
    now = now or dt.datetime.now(dt.UTC)
    cutoff_us = int((now - MOESIF_LATE_WINDOW).timestamp() * 1_000_000)
    old, oldest = 0, None
    for fp in plan.files:
        if fp.src.key in plan.complete:
            continue
        time_col = fp.resolved.columns[plan.spec.time.column]
        try:
            for batch in fp.batches([time_col], s3=plan.s3):
                us, _bad = time_bounds(batch.column(0), plan.spec)
                is_old = np.asarray(
                    pc.fill_null(pc.less(us, cutoff_us), False).to_numpy(zero_copy_only=False)
                )
                if window is not None:
                    is_old &= ~outside_mask(us, window)
                n_old = int(is_old.sum())
                if n_old:
                    old += n_old
                    low = pc.min(pc.filter(us, pa.array(is_old))).as_py()
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
