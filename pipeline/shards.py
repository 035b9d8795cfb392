"""Shards: the units of work of every run, in this process or on a Dask cluster.

A shard is a whole input file, or a range of consecutive row groups of a Parquet file, so that
one big file spreads over several workers. A Parquet file is cut into ranges of at least
`SHARD_CHUNKS` chunks (`chunk_rows` rows each) and at least one row group; CSV and NDJSON
files are one shard each (they cannot be cut without reading them).

Each shard has its own checkpoint job, ``<job>.shard-<sid>`` (`Shard.job`), written only by the
runner of that shard under that job's lock, so two workers never write the same checkpoint
object, a lost worker costs only the shard it had in flight, and a chunk commit rewrites one
file's progress, whatever the number of files. `sid` is a hash of the file's key and the
row-group range, not a position in the input list, so adding an input file renames nothing.
Chunks are numbered from the shard's first row: chunk i of a shard is its rows [i*C, (i+1)*C).

The job's own directory keeps the shard layout in ``shards.json`` (pipeline/layout.py, written
by the driver under the job's lock when the shards are planned, periodically while they run,
and at the end): for every file its identity and row-group ranges, and for every shard the
totals the driver last saw. A rerun reuses a file's recorded ranges (so the same shards,
whatever --chunk-rows says now), skips shards recorded complete, and refuses a file changed
since it was recorded. The layout is the same whichever runner ran the shards (one process,
`LocalRunner`, or a Dask cluster, `DaskRunner`: pipeline/runners.py), so a job started in one
may be finished by the other.

A checkpoint of b96172b's single-process layout (every file's progress in ``<job>/state.json``)
is adopted as it is (`adopt_file_progress`): each file's progress becomes the checkpoint of a
whole-file shard (which starts at row 0, so its chunk numbers and chunk_rows are unchanged).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from connectors.checkpoint import CheckpointStore, JobState, validate_job_name
from connectors.readers import parquet_row_groups
from moesif_backfill.errors import CheckpointMismatchError, ConfigError, SourceError
from pipeline.layout import (
    LAYOUT_DOC,
    FileShards,
    Shard,
    ShardLayout,
    ShardTotals,
    load_layout,
    save_layout,
)
from pipeline.plan import Plan, reprocess_keys

log = logging.getLogger(__name__)

SHARD_CHUNKS = 20  # a Parquet shard holds at least this many chunks (and one row group)
_SHARD_SUFFIX_LEN = len(".shard-") + 16


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
            f"job name {job!r} is too long: shard checkpoints are named <job>.shard-<16 hex "
            f"digits>, at most 128 characters; use a --job name of at most "
            f"{128 - _SHARD_SUFFIX_LEN} characters"
        )


def adopt_file_progress(plan: Plan, store: CheckpointStore, layout: ShardLayout) -> int:
    """Move the progress a checkpoint of the single-process layout keeps per file in the job's
    state (written by b96172b and earlier) into whole-file shards: each file's progress becomes
    its shard's checkpoint (unless that exists already: an adoption interrupted part-way), the
    layout records the file as one shard, then the job's state keeps no files. Returns how
    many files were adopted. The caller holds the job lock."""
    state = plan.state
    if not state.files:
        return 0
    adopted = 0
    for key, prog in state.files.items():
        if key in layout.files:
            continue
        shard = Shard(0, 0, key, None, 0, None)
        job = shard.job(plan.job)
        with store.lock(job):
            if store.load(job) is None:
                own = JobState.new(job, state.mapping_fingerprint)
                own.files[key] = prog
                store.commit(own)
        layout.files[key] = FileShards(identity=prog.identity)
        layout.shards[shard.sid] = ShardTotals.of(prog)
        adopted += 1
    save_layout(store, plan.job, layout)
    state.files.clear()
    store.commit(state)
    log.info("job %s: progress of %d file(s) moved to whole-file shards", plan.job, adopted)
    return adopted


def file_shards(plan: Plan) -> list[Shard]:
    """One whole-file shard per file, nothing recorded (dry-run and validate)."""
    return [Shard(i, i, fp.src.key, None, 0, fp.rows_estimate) for i, fp in enumerate(plan.files)]


def plan_shards(plan: Plan, store: CheckpointStore) -> tuple[list[Shard], ShardLayout]:
    """The shards of `plan` (on the driver, under the job lock): recorded files keep their
    ranges, new files are cut (`split_row_groups`), and the layout is saved before any shard
    runs. Raises CheckpointMismatchError when a recorded file changed."""
    job = plan.job
    check_job_name(job)
    settings = plan.settings
    reprocess = reprocess_keys(settings)
    layout = load_layout(store, job)
    adopt_file_progress(plan, store, layout)
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
            f"job {job!r}: {len(changed)} input file(s) changed since they were (partly) "
            f"delivered:\n  {shown}\nRows already delivered from them would be skipped "
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
    "adopt_file_progress",
    "check_job_name",
    "file_shards",
    "load_layout",
    "plan_shards",
    "reset_shards",
    "save_layout",
    "split_row_groups",
    "target_rows",
]
