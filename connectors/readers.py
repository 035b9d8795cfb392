"""Bounded-memory Arrow readers for `SourceFile`s, local or on S3 (Parquet, CSV, NDJSON).

    read_schema(src, *, text_columns=(), number_columns=(), options=None, s3=None) -> pa.Schema
    iter_batches(src, *, columns=None, text_columns=(), number_columns=(), batch_rows=65_536,
                 options=None, row_groups=None, s3=None) -> Iterator[RecordBatch]
    parquet_row_groups(src, s3=None) -> list[int]   (rows in each row group, from the footer)
    scan_number_columns(src, columns, options=None, *, s3=None) -> frozenset[str]

`s3`: the run's `S3Store` (connectors.s3_store), needed for s3:// files. CSV lives in
`connectors.csv_reader` (dialect: `csv_dialect`, error messages: `csv_errors`), NDJSON in
`connectors.ndjson` (values: `ndjson_values`).

`row_groups=(a, b)` reads only a Parquet file's row groups a..b-1 (a shard of the file on a
Dask cluster, pipeline/shards.py); error messages still number rows from the start of the file.

Memory stays bounded: Parquet is read with ParquetFile.iter_batches (buffered column chunks, no
pre-buffering of whole row groups); CSV with pyarrow.csv.open_csv in CSV_BLOCK_BYTES blocks;
NDJSON with pyarrow.json.open_json (or a line-block Python reader, see connectors.ndjson).
Every batch of one file has the schema `read_schema(src, text_columns=...)` restricted to
`columns`, and at most `batch_rows` rows.

Type inference (CSV and NDJSON) is made stable across blocks: the types are inferred once from
the first block of the file (CSV_BLOCK_BYTES / NDJSON_BLOCK_BYTES of decompressed text), columns
with no value there become strings, and the file is then read with those types fixed. A later
value that does not fit raises SourceError naming the file, column and row, and suggests
reading the column as text. `text_columns` are never inferred: they come back as strings exactly
as written (CSV and NDJSON); Parquet columns keep their stored type.

`number_columns` come back as the text of each number exactly as written, so that no digit is
lost to a double ("0.123456789012345678", "12345678901234567890", "12.50"). CSV: the plan passes
the columns `scan_number_columns` found to hold only JSON numbers in the whole file, and every
value is checked again (a SourceError names the row of one that is not). NDJSON: the plan
passes metadata fields whose values are JSON numbers in the first block; a later value that is
not a JSON number is a SourceError naming the line (connectors.ndjson).

CSV null convention (warehouse unloads): an empty unquoted field is null; a quoted empty field
("") is the empty string. A quoted "" in an otherwise numeric column therefore makes that column
a string column.

Hostile input: a malformed row (too few or too many fields, an unbalanced quote), bytes that are
not UTF-8 (CSV, and string data in Parquet and NDJSON, which their readers do not check) and
values that do not fit the inferred type raise SourceError naming the file, the column and the
data row (1-based, header excluded; a quoted line break does not start a new row). Messages are
one line.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from connectors import ndjson
from connectors.columns import check_values, select_columns
from connectors.csv_dialect import dialect_of
from connectors.csv_reader import csv_batches, csv_schema, json_numbers
from connectors.file_access import open_parquet_file
from connectors.source_file import SourceFile, one_line
from moesif_backfill.errors import SourceError
from transforms.source_options import SourceOptions

if TYPE_CHECKING:
    from connectors.s3_store import S3Store

PARQUET_BUFFER_BYTES = 1 << 20


def read_schema(
    src: SourceFile,
    *,
    text_columns: Collection[str] = (),
    number_columns: Collection[str] = (),
    options: SourceOptions | None = None,
    s3: S3Store | None = None,
) -> pa.Schema:
    """The file's Arrow schema, cheaply: the Parquet footer, or inference over the first block.

    With `text_columns`/`number_columns` it is exactly the schema `iter_batches` gives for the
    same columns and `options` (the mapping's `source:` section: CSV delimiter, header,
    column names, null values, encoding; None: the defaults).
    """
    if src.format == "parquet":
        with _open_parquet(src, s3) as pf:
            schema: pa.Schema = pf.schema_arrow
        return schema
    if src.format == "csv":
        return csv_schema(src, [*text_columns, *number_columns], dialect_of(src, options), s3)
    return ndjson.infer_schema(src, [*text_columns, *number_columns], s3).schema


def iter_batches(
    src: SourceFile,
    *,
    columns: Sequence[str] | None = None,
    text_columns: Collection[str] = (),
    number_columns: Collection[str] = (),
    batch_rows: int = 65_536,
    options: SourceOptions | None = None,
    csv_block_bytes: int | None = None,
    row_groups: tuple[int, int] | None = None,
    s3: S3Store | None = None,
) -> Iterator[pa.RecordBatch]:
    """Stream `src` as RecordBatches of at most `batch_rows` rows, all with the same schema.

    `csv_block_bytes`: CSV block size (default CSV_STREAM_BLOCK_BYTES); CSV_BLOCK_BYTES makes
    the first batch the block the column types were inferred from. `row_groups`: (a, b) reads
    only row groups a..b-1 of a Parquet file (ValueError for another format).

    Column names are checked now (SourceError for an unknown one); read errors surface while
    iterating, as SourceError naming the file and the row/line or column when known.
    """
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be positive, got {batch_rows}")
    if columns is not None and (not columns or len(set(columns)) != len(columns)):
        raise ValueError(f"columns must be None or distinct column names, got {list(columns)}")
    if row_groups is not None and src.format != "parquet":
        raise ValueError(f"{src.path}: row_groups applies to Parquet files only")
    if src.format == "parquet":
        schema, batches = _parquet_batches(src, columns, batch_rows, row_groups, s3)
    elif src.format == "csv":
        dialect = dialect_of(src, options)
        schema, batches = csv_batches(
            src, columns, text_columns, number_columns, dialect, s3, block_bytes=csv_block_bytes
        )
    else:
        schema, batches = ndjson.ndjson_batches(
            src, columns, text_columns, batch_rows, number_columns=number_columns, s3=s3
        )
    return _bounded(src, schema, batches, batch_rows)


def _bounded(
    src: SourceFile, schema: pa.Schema, batches: Iterator[pa.RecordBatch], batch_rows: int
) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        if batch.num_rows == 0:
            continue
        out = batch if batch.schema.equals(schema) else _conform(src, batch, schema)
        for offset in range(0, out.num_rows, batch_rows):
            yield out.slice(offset, batch_rows)


def _conform(src: SourceFile, batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    try:
        return pa.RecordBatch.from_arrays(
            [batch.column(f.name).cast(f.type) for f in schema], schema=schema
        )
    except (pa.ArrowException, KeyError) as exc:
        raise SourceError(
            f"{src.path}: a block of the file does not match the schema of its first block "
            f"({one_line(exc)}); expected {one_line(str(schema))}. Re-export the file with "
            "consistent types."
        ) from exc


def _open_parquet(src: SourceFile, s3: S3Store | None) -> pq.ParquetFile:
    try:
        return open_parquet_file(src, s3, buffer_size=PARQUET_BUFFER_BYTES, pre_buffer=False)
    except (OSError, pa.ArrowException) as exc:
        raise SourceError(
            f"{src.path}: not a readable Parquet file ({one_line(exc)}). It may be truncated, "
            "still being written, or not Parquet at all: re-export it or leave it out of the "
            "inputs."
        ) from exc


def parquet_num_rows(src: SourceFile, s3: S3Store | None = None) -> int:
    """The row count a Parquet file's footer states (no data read)."""
    with _open_parquet(src, s3) as pf:
        return int(pf.metadata.num_rows)


def parquet_row_groups(src: SourceFile, s3: S3Store | None = None) -> list[int]:
    """The rows in each row group of a Parquet file, from its footer (no data read)."""
    with _open_parquet(src, s3) as pf:
        meta = pf.metadata
        return [int(meta.row_group(i).num_rows) for i in range(meta.num_row_groups)]


def _row_group_range(
    src: SourceFile, pf: pq.ParquetFile, row_groups: tuple[int, int]
) -> tuple[list[int], int]:
    """The row group indices of `row_groups` and the file row the first one starts at."""
    a, b = row_groups
    n = pf.metadata.num_row_groups
    if not 0 <= a < b <= n:
        raise SourceError(
            f"{src.path}: row groups {a}..{b - 1} asked for, but the file has {n}; the file "
            "was replaced since its shards were planned: rerun with --reprocess for it."
        )
    first = sum(int(pf.metadata.row_group(i).num_rows) for i in range(a))
    return list(range(a, b)), first


def _parquet_batches(
    src: SourceFile,
    columns: Sequence[str] | None,
    batch_rows: int,
    row_groups: tuple[int, int] | None,
    s3: S3Store | None,
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    pf = _open_parquet(src, s3)
    try:
        schema = select_columns(src, pf.schema_arrow, columns)
        groups, first_row = (
            (None, 0) if row_groups is None else _row_group_range(src, pf, row_groups)
        )
    except BaseException:
        pf.close()
        raise

    def gen() -> Iterator[pa.RecordBatch]:
        rows = first_row
        with pf:
            try:
                for batch in pf.iter_batches(
                    batch_size=batch_rows, columns=schema.names, row_groups=groups
                ):
                    check_values(src, batch, rows)
                    yield batch
                    rows += batch.num_rows
            except (OSError, pa.ArrowException) as exc:
                raise SourceError(
                    f"{src.path}: cannot read the Parquet data after row {rows} "
                    f"({one_line(exc)}); the file is probably corrupt or truncated: re-export it."
                ) from exc

    return schema, gen()


def scan_number_columns(
    src: SourceFile,
    columns: Sequence[str],
    options: SourceOptions | None = None,
    *,
    s3: S3Store | None = None,
) -> frozenset[str]:
    """The `columns` of a CSV file in which every non-null value, in the whole file, is written
    as a JSON number (blanks around it allowed): one pass over those columns as text, in
    bounded blocks, that stops once every column has shown some other value. The preflight
    decides with it, per file and column, whether metadata goes out as numbers or as strings
    (pipeline.binding), so every chunk of the file, also after a resume, is typed alike."""
    left = list(dict.fromkeys(columns))
    if not left:
        return frozenset()
    batches = iter_batches(src, columns=left, text_columns=left, options=options, s3=s3)
    try:
        for batch in batches:
            for name in list(left):
                if pc.all(json_numbers(batch.column(name))).as_py() is False:
                    left.remove(name)
            if not left:
                break
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()
    return frozenset(left)
