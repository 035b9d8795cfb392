"""Bounded-memory Arrow readers for local `SourceFile`s (Parquet, CSV, NDJSON).

    read_schema(src, *, text_columns=()) -> pa.Schema
    iter_batches(src, *, columns=None, text_columns=(), batch_rows=65_536) -> Iterator[RecordBatch]

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

CSV null convention (warehouse unloads): an empty unquoted field is null; a quoted empty field
("") is the empty string. A quoted "" in an otherwise numeric column therefore makes that column
a string column.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Sequence

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from connectors import ndjson
from connectors.ndjson import size_text
from connectors.sources import Format, SourceFile, discover_sources, open_input
from moesif_backfill.errors import SourceError

__all__ = [
    "CSV_BLOCK_BYTES",
    "Format",
    "SourceFile",
    "discover_sources",
    "iter_batches",
    "read_schema",
]

CSV_BLOCK_BYTES = 4 << 20
PARQUET_BUFFER_BYTES = 1 << 20

_CSV_CONVERSION = re.compile(
    r"In CSV column #(\d+): (?:Row #\d+: )?CSV conversion error to ([^:]+): (.*)", re.S
)


def read_schema(src: SourceFile, *, text_columns: Collection[str] = ()) -> pa.Schema:
    """The file's Arrow schema, cheaply: the Parquet footer, or inference over the first block.

    With `text_columns` it is exactly the schema `iter_batches` gives for the same columns.
    """
    if src.format == "parquet":
        with _open_parquet(src) as pf:
            schema: pa.Schema = pf.schema_arrow
        return schema
    if src.format == "csv":
        return _csv_schema(src, text_columns)
    return ndjson.infer_schema(src, text_columns).schema


def iter_batches(
    src: SourceFile,
    *,
    columns: Sequence[str] | None = None,
    text_columns: Collection[str] = (),
    batch_rows: int = 65_536,
) -> Iterator[pa.RecordBatch]:
    """Stream `src` as RecordBatches of at most `batch_rows` rows, all with the same schema.

    Column names are checked now (SourceError for an unknown one); read errors surface while
    iterating, as SourceError naming the file and the row/line or column when known.
    """
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be positive, got {batch_rows}")
    if columns is not None and (not columns or len(set(columns)) != len(columns)):
        raise ValueError(f"columns must be None or distinct column names, got {list(columns)}")
    if src.format == "parquet":
        schema, batches = _parquet_batches(src, columns, batch_rows)
    elif src.format == "csv":
        schema, batches = _csv_batches(src, columns, text_columns)
    else:
        schema, batches = ndjson.ndjson_batches(src, columns, text_columns, batch_rows)
    return _bounded(src, schema, batches, batch_rows)


def select_columns(src: SourceFile, schema: pa.Schema, columns: Sequence[str] | None) -> pa.Schema:
    """`schema` restricted to `columns`, in that order; SourceError for unknown names."""
    if columns is None:
        return schema
    missing = [c for c in columns if schema.get_field_index(c) < 0]
    if missing:
        raise SourceError(
            f"{src.path}: column(s) {', '.join(map(repr, missing))} not found in the file; its "
            f"columns are: {_names(schema)}. Check the column names in the mapping (they are "
            "case-sensitive)."
        )
    return pa.schema([schema.field(c) for c in columns])


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
            f"({exc}); expected {schema}. Re-export the file with consistent types."
        ) from exc


def _names(schema: pa.Schema, limit: int = 40) -> str:
    names = schema.names
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "") or "(none)"


# --------------------------------------------------------------------------------------------
# Parquet


def _open_parquet(src: SourceFile) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(src.path, buffer_size=PARQUET_BUFFER_BYTES, pre_buffer=False)
    except (OSError, pa.ArrowException) as exc:
        raise SourceError(
            f"{src.path}: not a readable Parquet file ({exc}). It may be truncated, still being "
            "written, or not Parquet at all: re-export it or leave it out of the inputs."
        ) from exc


def _parquet_batches(
    src: SourceFile, columns: Sequence[str] | None, batch_rows: int
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    pf = _open_parquet(src)
    try:
        schema = select_columns(src, pf.schema_arrow, columns)
    except BaseException:
        pf.close()
        raise

    def gen() -> Iterator[pa.RecordBatch]:
        rows = 0
        with pf:
            try:
                for batch in pf.iter_batches(batch_size=batch_rows, columns=schema.names):
                    yield batch
                    rows += batch.num_rows
            except (OSError, pa.ArrowException) as exc:
                raise SourceError(
                    f"{src.path}: cannot read the Parquet data after row {rows} ({exc}); the file "
                    "is probably corrupt or truncated: re-export it."
                ) from exc

    return schema, gen()


# --------------------------------------------------------------------------------------------
# CSV


def _csv_options(
    column_types: dict[str, pa.DataType], include_columns: Sequence[str] | None = None
) -> tuple[pacsv.ReadOptions, pacsv.ParseOptions, pacsv.ConvertOptions]:
    read = pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES)
    parse = pacsv.ParseOptions(newlines_in_values=True)
    convert = pacsv.ConvertOptions(
        column_types=column_types,
        include_columns=list(include_columns) if include_columns is not None else None,
        null_values=[""],
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
    )
    return read, parse, convert


def _csv_schema(src: SourceFile, text_columns: Collection[str]) -> pa.Schema:
    """Header + types inferred from the first block; all-null columns become strings."""
    read, parse, convert = _csv_options({c: pa.string() for c in text_columns})
    with open_input(src) as stream:
        try:
            schema: pa.Schema = pacsv.open_csv(stream, read, parse, convert).schema
        except (OSError, pa.ArrowException) as exc:
            raise _csv_error(src, exc, 0, None) from exc
    names = schema.names
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SourceError(
            f"{src.path}: the CSV header repeats column name(s) {duplicates}; give every column "
            "a unique name."
        )
    binary = [f.name for f in schema if pa.types.is_binary(f.type)]
    if binary:
        raise SourceError(
            f"{src.path}: column(s) {binary} hold bytes that are not valid UTF-8 in the first "
            f"{size_text(CSV_BLOCK_BYTES)}; re-export the file as UTF-8."
        )
    missing = [c for c in text_columns if c not in names]
    if missing:
        raise SourceError(
            f"{src.path}: key/text column(s) {missing} are not in the CSV header; its columns "
            f"are: {_names(schema)}. Check the column names in the mapping."
        )
    return pa.schema([f.with_type(pa.string()) if pa.types.is_null(f.type) else f for f in schema])


def _csv_batches(
    src: SourceFile, columns: Sequence[str] | None, text_columns: Collection[str]
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    full = _csv_schema(src, text_columns)
    schema = select_columns(src, full, columns)
    read, parse, convert = _csv_options({f.name: f.type for f in schema}, schema.names)

    def gen() -> Iterator[pa.RecordBatch]:
        rows = 0
        with open_input(src) as stream:
            try:
                reader = pacsv.open_csv(stream, read, parse, convert)
                for batch in reader:
                    yield batch
                    rows += batch.num_rows
            except (OSError, pa.ArrowException) as exc:
                raise _csv_error(src, exc, rows, full) from exc

    return schema, gen()


def _csv_error(src: SourceFile, exc: Exception, rows: int, header: pa.Schema | None) -> SourceError:
    msg = str(exc).strip()
    where = f"at or after data row {rows + 1}"
    m = _CSV_CONVERSION.match(msg)
    if m and header is not None:
        index, typ, detail = int(m.group(1)), m.group(2), m.group(3)
        column = repr(header.names[index]) if index < len(header.names) else f"#{index}"
        if "UTF8" in detail:
            return SourceError(
                f"{src.path}: column {column} has bytes that are not valid UTF-8 ({where}); "
                "re-export the file as UTF-8."
            )
        value = detail.removeprefix("invalid value ")
        return SourceError(
            f"{src.path}: column {column} has the value {value} ({where}) that is not a valid "
            f"{typ}. The column type was inferred as {typ} from the first "
            f"{size_text(CSV_BLOCK_BYTES)} of the file and later values must fit it. If {column} "
            "is an identifier or key, read it as text (declare it a key/text column in the "
            "mapping); otherwise fix the value in the file."
        )
    if msg.startswith("Empty CSV file"):
        return SourceError(
            f"{src.path}: the CSV file is empty; a CSV input needs a header row with the column "
            "names. Remove the file from the inputs or re-export it with a header."
        )
    if msg.startswith("CSV parse error"):
        return SourceError(
            f"{src.path}: malformed CSV {where}: {msg}. Every row needs as many fields as the "
            "header and quotes must be balanced: fix the row or re-export the file."
        )
    if src.compression is not None and isinstance(exc, OSError | pa.ArrowInvalid):
        return SourceError(
            f"{src.path}: cannot decompress or read the {src.compression} data {where} ({msg}). "
            "The file is probably truncated or corrupt: re-download or re-export it."
        )
    return SourceError(
        f"{src.path}: cannot read the CSV {where} ({msg}); check that it is a valid UTF-8 CSV "
        "with a header row."
    )
