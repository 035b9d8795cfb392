"""Shards: the units of work a Dask cluster runs (flows/shard_task.py), and the record of them.

A shard is a whole input file, or a range of consecutive row groups of a Parquet file, so that
one big file spreads over several workers. A Parquet file is cut into ranges of at least
`SHARD_CHUNKS` chunks (`chunk_rows` rows each) and at least one row group; CSV and NDJSON
files are one shard each (they cannot be cut without reading them).

Each shard has its own checkpoint job, ``<job>.shard-<sid>`` (`Shard.job`), written only by the
worker running it under that job's lock, so two workers never write the same checkpoint object
and a lost worker costs only the shard it had in flight. `sid` is a hash of the file's key and
the row-group range, not a position in the input list, so adding an input file renames nothing.
Chunks are numbered from the shard's first row: chunk i of a shard is its rows [i*C, (i+1)*C).

The job's own directory keeps the shard layout in the document ``shards.json`` (written by the
driver under the job's lock): for every file its identity and row-group ranges, and for every
shard the totals the driver last saw (rows sent, rejected, outside the window; complete). A
rerun reuses a file's recorded ranges (so the same shards, whatever --chunk-rows says now), skips
shards recorded complete, and refuses what would double-send or skip rows: a job started in one
process resumed on Dask or the other way round, or a file changed since it was recorded.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from connectors.checkpoint import CheckpointStore, FileProgress, validate_job_name
from connectors.readers import parquet_row_groups
from moesif_backfill.errors import (
    CheckpointError,
    CheckpointMismatchError,
    ConfigError,
    SourceError,
)
from pipeline.plan import Plan, reprocess_keys

log = logging.getLogger(__name__)

SHARD_CHUNKS = 20  # a Parquet shard holds at least this many chunks (and one row group)
LAYOUT_DOC = "shards.json"
_SHARD_SUFFIX_LEN = len(".shard-") + 16


@dataclass(frozen=True)
class Shard:
    """One unit of work: a file, or row groups [a, b) of a Parquet file."""

    index: int  # position in this run's list of shards (names the Prefect task run)
    file_index: int  # position of the file in Plan.files
    key: str  # the file's checkpoint key (SourceFile.key)
    row_groups: tuple[int, int] | None  # None: the whole file
    first_row: int  # the file's row (0-based) the shard starts at
    rows: int | None  # rows in the shard; None: not known before reading (CSV, NDJSON)

    @property
    def sid(self) -> str:
        """Stable name of the shard: a hash of the file key and the row-group range."""
        text = self.key if self.row_groups is None else f"{self.key}\n{self.row_groups}"
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    def job(self, job: str) -> str:
        """The shard's own checkpoint job."""
        return f"{job}.shard-{self.sid}"

    def describe(self) -> str:
        if self.row_groups is None:
            return self.key
        a, b = self.row_groups
        return f"{self.key} row groups {a}..{b - 1}"


def target_rows(chunk_rows: int) -> int:
    """The least rows of a Parquet shard (its last one may have fewer)."""
    return SHARD_CHUNKS * chunk_rows


def split_row_groups(sizes: Sequence[int], target: int) -> list[tuple[int, int]]:
    """Cut row groups (their row counts, in file order) into consecutive ranges [a, b) of at
    least `target` rows each; the last range takes what is left. Every row group is in
    exactly one range; the result depends only on `sizes` and `target`."""
    if target < 1:
        raise ValueError(f"target must be positive, got {target}")
    ranges: list[tuple[int, int]] = []
    start = held = 0
    for i, n in enumerate(sizes):
        held += n
        if held >= target:
            ranges.append((start, i + 1))
            start, held = i + 1, 0
    if start < len(sizes):
        ranges.append((start, len(sizes)))
    return ranges


# ------------------------------------------------------------------------------------------
# the job's record of its shards


class ShardTotals(BaseModel):
    """A shard's totals as its checkpoint had them when the driver last heard of it."""

    model_config = ConfigDict(extra="forbid")

    rows_sent: int = Field(default=0, ge=0)
    rows_rejected: int = Field(default=0, ge=0)
    rows_outside_window: int = Field(default=0, ge=0)
    complete: bool = False

    @classmethod
    def of(cls, prog: FileProgress) -> ShardTotals:
        """The totals of a shard's checkpoint progress."""
        return cls(
            rows_sent=prog.rows_sent,
            rows_rejected=prog.rows_rejected,
            rows_outside_window=prog.rows_outside_window,
            complete=prog.complete,
        )

    @property
    def rows_done(self) -> int:
        return self.rows_sent + self.rows_rejected + self.rows_outside_window


class FileShards(BaseModel):
    """How one file was cut: its identity then, and its row-group ranges (None: one shard)."""

    model_config = ConfigDict(extra="forbid")

    identity: dict[str, int | str]
    row_groups: list[tuple[int, int]] | None = None
    rows: list[int] | None = None  # rows of each range


class ShardLayout(BaseModel):
    """The ``shards.json`` document of a job run on Dask."""

    model_config = ConfigDict(extra="forbid")

    layout_version: int = 1
    files: dict[str, FileShards] = Field(default_factory=dict)
    shards: dict[str, ShardTotals] = Field(default_factory=dict)  # by Shard.sid

    def all_complete(self, shards: Sequence[Shard]) -> bool:
        """Whether every one of `shards` is recorded complete."""
        return all((t := self.shards.get(s.sid)) is not None and t.complete for s in shards)

    def shards_of(self, key: str, file_index: int = 0) -> list[Shard]:
        rec = self.files[key]
        if rec.row_groups is None:
            return [Shard(0, file_index, key, None, 0, rec.rows[0] if rec.rows else None)]
        rows = rec.rows or [0] * len(rec.row_groups)
        out, first = [], 0
        for (a, b), n in zip(rec.row_groups, rows, strict=True):
            out.append(Shard(0, file_index, key, (a, b), first, n))
            first += n
        return out


def load_layout(store: CheckpointStore, job: str) -> ShardLayout:
    """The job's shard layout (empty when the job never ran on Dask)."""
    body = store.read_document(job, LAYOUT_DOC)
    if body is None:
        return ShardLayout()
    try:
        return ShardLayout.model_validate(body)
    except ValidationError as exc:
        raise CheckpointError(
            f"{store.describe()}/{job}/{LAYOUT_DOC} is not a shard layout this version can read "
            f"({exc.error_count()} error(s)); upgrade moesif-backfill, or rerun with --reset"
        ) from None


def save_layout(store: CheckpointStore, job: str, layout: ShardLayout) -> None:
    store.write_document(job, LAYOUT_DOC, layout.model_dump(mode="json"))


def refuse_sharded_job(store: CheckpointStore, job: str) -> None:
    """A run in one process must not resume a job whose progress is in shard checkpoints."""
    layout = load_layout(store, job)
    if layout.files:
        raise CheckpointMismatchError(
            f"job {job!r} was started on a Dask cluster (--workers/--dask-address): its progress "
            f"is in the checkpoints of {len(layout.shards)} shard(s) of {len(layout.files)} "
            "file(s), which a run in one process does not read, so it would send every row "
            "again. Resume it with --workers N or --dask-address, or rerun with --reset to start "
            "over in one process (rows already delivered are sent again; Moesif deduplicates "
            "them by transaction_id), or use a new --job name."
        )


def reset_shards(store: CheckpointStore, job: str, keys: set[str] | None = None) -> int:
    """Forget the shard checkpoints of the files `keys` (None: every file) and their record in
    the layout; returns how many shard checkpoints were reset. The caller holds the job lock;
    each shard's lock is taken for its reset (JobLockedError if a worker still runs it)."""
    layout = load_layout(store, job)
    chosen = [k for k in layout.files if keys is None or k in keys]
    if not chosen:
        return 0
    n = 0
    for key in chosen:
        for shard in layout.shards_of(key):
            with store.lock(shard.job(job)):
                store.reset(shard.job(job))
            layout.shards.pop(shard.sid, None)
            n += 1
        del layout.files[key]
    save_layout(store, job, layout)
    log.warning("job %s: reset %d shard checkpoint(s) of %d file(s)", job, n, len(chosen))
    return n


def check_job_name(job: str) -> None:
    validate_job_name(job)
    if len(job) + _SHARD_SUFFIX_LEN > 128:
        raise ConfigError(
            f"job name {job!r} is too long to run on Dask: shard checkpoints are named "
            f"<job>.shard-<16 hex digits>, at most 128 characters; use a --job name of at most "
            f"{128 - _SHARD_SUFFIX_LEN} characters"
        )


def plan_shards(plan: Plan, store: CheckpointStore) -> tuple[list[Shard], ShardLayout]:
    """The shards of `plan` (on the driver, under the job lock): recorded files keep their
    ranges, new files are cut (`split_row_groups`), and the layout is saved before any shard
    runs. Raises CheckpointMismatchError when resuming would double-send or skip rows."""
    job = plan.job
    check_job_name(job)
    if plan.state.files:
        raise CheckpointMismatchError(
            f"job {job!r} has progress from a run in one process (without --workers or "
            f"--dask-address) for {len(plan.state.files)} file(s); a run on Dask keeps progress "
            "per shard and would send those rows again. Finish the job the way it started "
            "(without --workers/--dask-address), or rerun with --reset to start over on Dask "
            "(rows already delivered are sent again; Moesif deduplicates them by "
            "transaction_id), or use a new --job name."
        )
    settings = plan.settings
    reprocess = reprocess_keys(settings)
    layout = load_layout(store, job)
    again = {
        fp.src.key for fp in plan.files if fp.src.key in reprocess and fp.src.key in layout.files
    }
    if again:
        reset_shards(store, job, again)
        layout = load_layout(store, job)
    changed = [
        fp.src.key
        for fp in plan.files
        if fp.src.key in layout.files and layout.files[fp.src.key].identity != fp.src.identity()
    ]
    if changed:
        shown = "\n  ".join(changed[:10])
        raise CheckpointMismatchError(
            f"job {job!r}: {len(changed)} input file(s) changed since their shards were "
            f"(partly) delivered:\n  {shown}\nRows already delivered from them would be skipped "
            "by position, which is no longer safe. Rerun with --reprocess FILE for each changed "
            "file (its rows are sent again; unchanged rows keep their transaction_id, so Moesif "
            "deduplicates them), or --reset to start the whole job over."
        )
    target = target_rows(settings.chunk_rows)
    for fp in plan.files:
        if fp.src.key in layout.files:
            continue
        rec = FileShards(identity=fp.src.identity())
        if fp.src.format == "parquet":
            try:
                sizes = parquet_row_groups(fp.src, plan.s3)
            except SourceError as exc:
                raise ConfigError(str(exc)) from None
            if sizes:
                rec.row_groups = split_row_groups(sizes, target)
                rec.rows = [sum(sizes[a:b]) for a, b in rec.row_groups]
        layout.files[fp.src.key] = rec
    shards: list[Shard] = []
    for i, fp in enumerate(plan.files):
        for s in layout.shards_of(fp.src.key, i):
            shards.append(
                Shard(len(shards), i, s.key, s.row_groups, s.first_row, s.rows or fp.rows_estimate)
            )
    save_layout(store, job, layout)
    return shards, layout


__all__ = [
    "LAYOUT_DOC",
    "SHARD_CHUNKS",
    "Shard",
    "ShardLayout",
    "ShardTotals",
    "load_layout",
    "plan_shards",
    "refuse_sharded_job",
    "reset_shards",
    "save_layout",
    "split_row_groups",
]
