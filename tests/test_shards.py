"""Shard planning (pipeline/shards.py) and the shard pipeline without a cluster.

* `split_row_groups`: every row group in exactly one range, ranges consecutive and in order,
  each but the last holding at least the target, the same answer for the same file;
* reading a Parquet file shard by shard (row-group ranges) gives every row exactly once, in
  order, and the whole file's row numbers in error messages;
* the layout is recorded at preflight and reused (a rerun with another --chunk-rows finds the
  same shards; a new input file renames no shard); a run in one process and a run on Dask plan
  the same shards from the same layout; a changed file is refused with what to do; --reprocess
  and --reset clear shard checkpoints;
* every shard run through `run_remote` (a Dask worker's code, in this process) delivers exactly
  the rows of a run in one process, and rejects are numbered by their row in the file.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.discovery import discover_sources
from connectors.readers import iter_batches, parquet_row_groups
from moesif_backfill.errors import CheckpointMismatchError, SourceError
from pipeline.run import Run
from pipeline.runners import DaskRunner
from pipeline.shard_work import ShardWork, merge_stats, run_remote
from pipeline.shards import Shard, load_layout, split_row_groups, target_rows
from tests.datasets import expected_id, expected_ids, payments_table, write_payments
from tests.runner import run_plain, strict_settings


@given(
    sizes=st.lists(st.integers(min_value=0, max_value=50), max_size=60),
    target=st.integers(min_value=1, max_value=120),
)
def test_split_row_groups_covers_every_group_once(sizes: list[int], target: int) -> None:
    ranges = split_row_groups(sizes, target)
    assert ranges == split_row_groups(list(sizes), target)  # stable
    flat = [i for a, b in ranges for i in range(a, b)]
    assert flat == list(range(len(sizes)))  # consecutive, in order, each group once
    assert all(a < b for a, b in ranges)
    for a, b in ranges[:-1]:
        assert sum(sizes[a:b]) >= target
        assert sum(sizes[a : b - 1]) < target  # a range closes as soon as it has enough


def test_split_row_groups_examples() -> None:
    assert split_row_groups([5_000] * 6, 10_000) == [(0, 2), (2, 4), (4, 6)]
    assert split_row_groups([5_000] * 5, 10_000) == [(0, 2), (2, 4), (4, 5)]
    assert split_row_groups([30_000, 10, 10], 10_000) == [(0, 1), (1, 3)]
    assert split_row_groups([], 10) == []
    with pytest.raises(ValueError, match="positive"):
        split_row_groups([1], 0)


def test_row_group_ranges_read_every_row_once(tmp_path: Path) -> None:
    table = payments_table(1, 10_007)
    path = tmp_path / "p.parquet"
    pq.write_table(table, path, row_group_size=1_000)
    (src,) = discover_sources([str(path)])
    sizes = parquet_row_groups(src)
    assert sizes == [1_000] * 10 + [7]
    parts = []
    for a, b in split_row_groups(sizes, 3_000):
        batches = list(iter_batches(src, columns=["invoice_line_id"], row_groups=(a, b)))
        part = pa.Table.from_batches(batches)
        assert part.num_rows == sum(sizes[a:b])
        parts.append(part)
    whole = pa.concat_tables(parts).column("invoice_line_id").to_pylist()
    assert whole == table.column("invoice_line_id").to_pylist()
    with pytest.raises(SourceError, match="has 11"):
        list(iter_batches(src, row_groups=(10, 12)))
    csv = write_payments(tmp_path / "p.csv", 1, 10)
    with pytest.raises(ValueError, match="Parquet files only"):
        iter_batches(discover_sources([str(csv)])[0], row_groups=(0, 1))


def test_row_group_range_errors_name_the_files_row(tmp_path: Path) -> None:
    """A value that is not UTF-8 in the second shard is reported at its row in the file."""
    names = [f"n{i}".encode() for i in range(40)]
    names[25] = b"caf\xe9 latin-1"
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"name": _strings(names)}), path, row_group_size=10)
    (src,) = discover_sources([str(path)])
    with pytest.raises(SourceError, match="at data row 26"):
        list(iter_batches(src, row_groups=(2, 4)))


def _strings(values: list[bytes]) -> pa.Array:
    """A string array holding exactly these bytes (pyarrow would refuse invalid UTF-8)."""
    offsets = [0]
    for v in values:
        offsets.append(offsets[-1] + len(v))
    return pa.StringArray.from_buffers(
        len(values),
        pa.py_buffer(pa.array(offsets, pa.int32()).buffers()[1]),
        pa.py_buffer(b"".join(values)),
    )


def _inputs(tmp_path: Path) -> list[Path]:
    a, b = tmp_path / "in" / "a.parquet", tmp_path / "in" / "b.csv"
    if not a.exists():
        write_payments(a, 1, 12_000)  # row groups of 5,000, 5,000 and 2,000 rows
        write_payments(b, 20_001, 1_500)
    return [a, b]


def _sharded(
    tmp_path: Path, server: Any, stream: str, sources: list[Path] | None = None, **kw: Any
) -> Run:
    inputs = sources if sources is not None else _inputs(tmp_path)
    return Run(strict_settings(tmp_path, inputs, server, stream, workers=2, **kw))


def _plan(run: Run) -> list[Shard]:
    """The driver's preflight (lock, plan, shard layout) and finish, without a cluster."""
    try:
        run.prepare()
        return run.shards
    finally:
        run.finish()


def _dask_work(run: Run, shard: Shard, threads: int = 2) -> ShardWork:
    """The work a DaskRunner would submit for `shard` on a cluster of `threads` threads."""
    return DaskRunner(None, lambda: threads).adapt(run.work(shard))


@pytest.mark.integration
def test_layout_is_recorded_and_reused(
    tmp_path: Path, strict_firehose: Any, firehose_stream: str
) -> None:
    fh = (strict_firehose, firehose_stream)
    shards = _plan(_sharded(tmp_path, *fh, chunk_rows=250))  # target 5,000 rows: 1 row group
    assert target_rows(250) == 5_000
    a = [s for s in shards if s.key.endswith("a.parquet")]
    assert [s.row_groups for s in a] == [(0, 1), (1, 2), (2, 3)]
    assert [(s.first_row, s.rows) for s in a] == [(0, 5_000), (5_000, 5_000), (10_000, 2_000)]
    (b,) = [s for s in shards if s.key.endswith("b.csv")]
    assert b.row_groups is None and b.first_row == 0
    assert len({s.sid for s in shards}) == len(shards)
    doc = json.loads((tmp_path / "ckpt" / "test-job" / "shards.json").read_text())
    assert doc["body"]["files"][a[0].key]["row_groups"] == [[0, 1], [1, 2], [2, 3]]

    # A rerun with another --chunk-rows and one more input keeps every recorded shard.
    write_payments(tmp_path / "in" / "0-first.parquet", 50_001, 100)
    shards2 = _plan(_sharded(tmp_path, *fh, sources=[tmp_path / "in"], chunk_rows=5_000))
    assert {s.sid for s in shards} < {s.sid for s in shards2}
    assert len(shards2) == len(shards) + 1
    assert {s.key: s.file_index for s in shards2}[a[0].key] == 1


@pytest.mark.integration
def test_one_process_and_dask_share_the_layout_and_reset_clears_it(
    tmp_path: Path, strict_firehose: Any, firehose_stream: str
) -> None:
    src = write_payments(tmp_path / "p.parquet", 1, 3_000)
    one = strict_settings(tmp_path, [src], strict_firehose, firehose_stream, chunk_rows=500)
    summary, error = run_plain(one)
    assert error is None and summary.actions_sent == 3_000
    here = _plan(Run(one))
    dask = one.model_copy(update={"workers": 2})
    there = _plan(Run(dask))  # the same shards, all recorded complete: nothing to send
    assert [s.sid for s in here] == [s.sid for s in there] and len(there) == 1
    again = Run(dask)
    try:
        again.prepare()
        assert again.pending() == []
    finally:
        summary = again.finish()
    assert summary.rows_skipped == 3_000 and summary.job_totals["files_complete"] == 1

    # --reset (in one process or on Dask: the same) clears the shard layout.
    reset = Run(one.model_copy(update={"reset": True}))
    try:
        reset.prepare()
        assert reset.store is not None
        assert all(reset.layout.shards.get(s.sid) is None for s in reset.shards)
    finally:
        reset.finish()
    assert reset.store is not None
    layout = load_layout(reset.store, "test-job")
    assert set(layout.files) == {str(src.resolve())} and layout.shards == {}


@pytest.mark.integration
def test_changed_file_is_refused_and_reprocess_resets_it(
    tmp_path: Path, strict_firehose: Any, firehose_stream: str
) -> None:
    fh = (strict_firehose, firehose_stream)
    _plan(_sharded(tmp_path, *fh, chunk_rows=250))
    write_payments(tmp_path / "in" / "a.parquet", 1, 12_001)  # replaced
    changed = r"(?s)changed since they were \(partly\) delivered.*--reprocess"
    with pytest.raises(CheckpointMismatchError, match=changed):
        _plan(_sharded(tmp_path, *fh, chunk_rows=250))
    again = [str(tmp_path / "in" / "a.parquet")]
    shards = _plan(_sharded(tmp_path, *fh, chunk_rows=250, reprocess=again))
    assert sum(s.rows or 0 for s in shards if s.key.endswith("a.parquet")) == 12_001


@pytest.mark.integration
def test_every_shard_through_the_worker_code_delivers_the_single_process_set(
    tmp_path: Path, strict_firehose: Any, firehose_stream: str
) -> None:
    """run_shard is what a Dask worker runs; here each shard runs in this process."""
    table = payments_table(1, 12_000)
    created = table.column("created_at").to_pylist()
    created[7_123] = None  # rejected: no time; its row in the file is 7,124
    table = table.set_column(3, "created_at", pa.array(created, table.schema.field(3).type))
    src = tmp_path / "in" / "a.parquet"
    src.parent.mkdir()
    pq.write_table(table, src, row_group_size=2_000)
    settings = strict_settings(
        tmp_path,
        [src],
        strict_firehose,
        firehose_stream,
        chunk_rows=200,
        workers=2,
        max_records_per_second=1_000_000,
    )
    run = Run(settings)
    run.prepare()
    shards = run.shards
    assert len(shards) == 3  # a 4,000-row target over 2,000-row groups: 2 + 2 + 2
    stats: dict[str, Any] = {}
    try:
        for shard in shards:
            work = _dask_work(run, shard, threads=2)
            assert work.settings.max_records_per_second == 500_000  # each thread's share
            result = run_remote(work)
            run.absorb(shard, result)
            stats = merge_stats(stats, result.stats)
    finally:
        summary = run.finish()
    assert summary.status == "complete_with_rejects"
    assert summary.actions_sent == 11_999 and summary.rows_rejected == 1 and summary.accounted
    assert summary.job_totals == {"rows_sent": 11_999, "rows_rejected": 1, "files_complete": 1}
    assert stats["firehose_calls"] == summary.firehose_calls > 0
    assert summary.send_limits["records_per_second"] == 1_000_000  # the run's, not a share
    delivered = strict_firehose.transaction_ids(firehose_stream)
    assert len(delivered) == 11_999
    assert set(delivered) == expected_ids(1, 12_000) - {expected_id(7_124)}
    (line,) = (tmp_path / "ckpt" / "test-job" / "rejects.ndjson").read_text().splitlines()
    assert json.loads(line)["row"] == 7_124
    assert json.loads(line)["values"]["invoice_line_id"] == "il_0007124"


@pytest.mark.integration
def test_shards_with_an_s3_checkpoint(
    tmp_path: Path, moto_firehose: Any, strict_firehose: Any, firehose_stream: str
) -> None:
    """Layout document and shard checkpoints in S3 (moto), each shard under its own lease."""
    s3 = moto_firehose.s3_client()
    bucket = f"shards-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    src = write_payments(tmp_path / "p.parquet", 1, 6_000)  # 5,000 + 1,000 rows: 2 shards
    settings = strict_settings(
        tmp_path,
        [src],
        strict_firehose,
        firehose_stream,
        chunk_rows=200,
        workers=2,
        checkpoint=f"s3://{bucket}/ckpt/",
        s3_endpoint_url=moto_firehose.endpoint_url,
    )
    run = Run(settings)
    run.prepare()
    shards = run.shards
    try:
        for shard in shards:
            run.absorb(shard, run_remote(_dask_work(run, shard)))
        run.save_layout()  # what the scheduler does as shards finish
    finally:
        summary = run.finish()
    assert len(shards) == 2 and summary.actions_sent == 6_000 and summary.accounted
    assert set(strict_firehose.transaction_ids(firehose_stream)) == expected_ids(1, 6_000)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert "ckpt/test-job/shards.json" in keys
    assert {f"ckpt/{s.job('test-job')}/state.json" for s in shards} <= keys
    assert not any(k.endswith("lease.json") for k in keys)  # every lease released

    # A rerun finds both shards complete in the layout and submits nothing.
    again = Run(settings)
    try:
        again.prepare()
        assert again.pending() == []
    finally:
        summary = again.finish()
    assert summary.rows_skipped == 6_000 and summary.actions_sent == 0
