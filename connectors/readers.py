"""Bounded-memory Arrow readers for local `SourceFile`s (Parquet, CSV, NDJSON).

    read_schema(src, *, text_columns=(), number_columns=()) -> pa.Schema
    iter_batches(src, *, columns=None, text_columns=(), number_columns=(), batch_rows=65_536,
                 row_groups=None) -> Iterator[RecordBatch]
    parquet_row_groups(src) -> list[int]   (rows in each row group, from the footer)

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

import csv
import re
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from connectors import ndjson, storage
from connectors.ndjson import size_text
from connectors.sources import Format, SourceFile, discover_sources, one_line, open_input
from moesif_backfill.errors import SourceError
from transforms.source_options import DEFAULT_OPTIONS, SourceOptions

__all__ = [
    "CSV_BLOCK_BYTES",
    "Format",
    "SourceFile",
    "discover_sources",
    "iter_batches",
    "parquet_row_groups",
    "read_schema",
    "scan_number_columns",
]

CSV_BLOCK_BYTES = 4 << 20
# Blocks once the types are fixed: Arrow's streaming CSV reader reads up to ~32 blocks ahead,
# so the block size bounds memory (1 MiB: ~37 MB peak; 4 MiB: ~145 MB) at the same speed.
CSV_STREAM_BLOCK_BYTES = 1 << 20
PARQUET_BUFFER_BYTES = 1 << 20

_CSV_CONVERSION = re.compile(
    r"In CSV column #(\d+): (?:Row #\d+: )?CSV conversion error to ([^:]+): (.*)", re.S
)
# A JSON number (RFC 8259), the same as transforms.jsonfrag.JSON_NUMBER: a text value is
# sent as a number only when it is written as one (blanks around it are dropped).
JSON_NUMBER = r"^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$"
_SHOWN_CHARS = 200


def read_schema(
    src: SourceFile,
    *,
    text_columns: Collection[str] = (),
    number_columns: Collection[str] = (),
    options: SourceOptions | None = None,
) -> pa.Schema:
    """The file's Arrow schema, cheaply: the Parquet footer, or inference over the first block.

    With `text_columns`/`number_columns` it is exactly the schema `iter_batches` gives for the
    same columns and `options` (the mapping's `source:` section: CSV delimiter, header,
    column names, null values, encoding; None: the defaults).
    """
    if src.format == "parquet":
        with _open_parquet(src) as pf:
            schema: pa.Schema = pf.schema_arrow
        return schema
    if src.format == "csv":
        return _csv_schema(src, [*text_columns, *number_columns], csv_dialect(src, options))
    return ndjson.infer_schema(src, [*text_columns, *number_columns]).schema


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
        schema, batches = _parquet_batches(src, columns, batch_rows, row_groups)
    elif src.format == "csv":
        dialect = csv_dialect(src, options)
        schema, batches = _csv_batches(
            src, columns, text_columns, number_columns, dialect, block_bytes=csv_block_bytes
        )
    else:
        schema, batches = ndjson.ndjson_batches(
            src, columns, text_columns, batch_rows, number_columns=number_columns
        )
    return _bounded(src, schema, batches, batch_rows)


def select_columns(src: SourceFile, schema: pa.Schema, columns: Sequence[str] | None) -> pa.Schema:
    """`schema` restricted to `columns`, in that order; SourceError for unknown names."""
    if columns is None:
        return schema
    repeated = [c for c in columns if schema.get_all_field_indices(c)[1:]]
    if repeated:
        raise SourceError(
            f"{src.path}: the file has several columns named {', '.join(map(repr, repeated))}; "
            "re-export it with unique column names."
        )
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
            f"({one_line(exc)}); expected {one_line(str(schema))}. Re-export the file with "
            "consistent types."
        ) from exc


def _names(schema: pa.Schema, limit: int = 40) -> str:
    names = schema.names
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "") or "(none)"


def check_values(src: SourceFile, batch: pa.RecordBatch, first_row: int) -> None:
    """SourceError for string data that is not UTF-8 (or otherwise invalid) in `batch`, naming
    the column and the data row. Parquet's reader does not check it; letting it through would
    give a transaction_id computed over raw bytes, or a crash later. Fixed-width columns have
    nothing to check; a full check of the rest costs ~25 ns per string value."""
    for field, column in zip(batch.schema, batch.columns, strict=True):
        if pa.types.is_primitive(field.type):
            continue
        try:
            column.validate(full=True)
        except pa.ArrowInvalid as exc:
            row = next((i for i in range(len(column)) if not _valid(column.slice(i, 1))), None)
            where = f"at data row {first_row + row + 1}" if row is not None else "in a batch"
            if "UTF8" in str(exc):
                what = "bytes that are not valid UTF-8"
            else:
                what = f"invalid data ({one_line(exc)})"
            raise SourceError(
                f"{src.path}: column {field.name!r} has {what} {where}; re-export the file "
                "(strings as UTF-8)."
            ) from exc


def _valid(arr: pa.Array) -> bool:
    try:
        arr.validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


# --------------------------------------------------------------------------------------------
# Parquet


def _open_parquet(src: SourceFile) -> pq.ParquetFile:
    try:
        return storage.open_parquet(
            src.path,
            etag=src.etag,
            size=src.size,
            buffer_size=PARQUET_BUFFER_BYTES,
            pre_buffer=False,
        )
    except (OSError, pa.ArrowException) as exc:
        raise SourceError(
            f"{src.path}: not a readable Parquet file ({one_line(exc)}). It may be truncated, "
            "still being written, or not Parquet at all: re-export it or leave it out of the "
            "inputs."
        ) from exc


def parquet_num_rows(src: SourceFile) -> int:
    """The row count a Parquet file's footer states (no data read)."""
    with _open_parquet(src) as pf:
        return int(pf.metadata.num_rows)


def parquet_row_groups(src: SourceFile) -> list[int]:
    """The rows in each row group of a Parquet file, from its footer (no data read)."""
    with _open_parquet(src) as pf:
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
    row_groups: tuple[int, int] | None = None,
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    pf = _open_parquet(src)
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


# --------------------------------------------------------------------------------------------
# CSV


@dataclass(frozen=True)
class CsvDialect:
    """How one CSV file is written (from the `source:` section and the file's layout)."""

    delimiter: str = ","
    column_names: tuple[str, ...] | None = None  # a file without a header row
    null_values: tuple[str, ...] = ("",)
    encoding: str = "utf-8"

    @property
    def header(self) -> bool:
        return self.column_names is None


_DEFAULT_DIALECT = CsvDialect()


def csv_dialect(src: SourceFile, options: SourceOptions | None) -> CsvDialect:
    opts = options or DEFAULT_OPTIONS
    if opts.is_default() and src.layout.delimiter is None:
        return _DEFAULT_DIALECT
    return CsvDialect(
        delimiter=opts.delimiter or src.layout.delimiter or ",",
        column_names=None if opts.has_header else opts.columns,
        null_values=tuple(opts.csv_null_values()),
        encoding=opts.encoding,
    )


def _open_csv(src: SourceFile, dialect: CsvDialect) -> pa.NativeFile:
    """`open_input`, transcoded to UTF-8 when the file is in another encoding."""
    stream = open_input(src)
    if dialect.encoding == "utf-8":
        return stream
    return pa.transcoding_input_stream(stream, dialect.encoding, "utf-8")


def _csv_options(
    column_types: dict[str, pa.DataType],
    include_columns: Sequence[str] | None = None,
    dialect: CsvDialect = _DEFAULT_DIALECT,
    block_size: int | None = None,
) -> tuple[pacsv.ReadOptions, pacsv.ParseOptions, pacsv.ConvertOptions]:
    names = list(dialect.column_names) if dialect.column_names is not None else None
    read = pacsv.ReadOptions(block_size=block_size or CSV_BLOCK_BYTES, column_names=names)
    parse = pacsv.ParseOptions(delimiter=dialect.delimiter, newlines_in_values=True)
    convert = pacsv.ConvertOptions(
        column_types=column_types,
        include_columns=list(include_columns) if include_columns is not None else None,
        null_values=list(dialect.null_values),
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
    )
    return read, parse, convert


def _csv_schema(
    src: SourceFile, text_columns: Collection[str], dialect: CsvDialect = _DEFAULT_DIALECT
) -> pa.Schema:
    """Header + types inferred from the first block; all-null columns become strings."""
    read, parse, convert = _csv_options({c: pa.string() for c in text_columns}, None, dialect)
    with _open_csv(src, dialect) as stream:
        try:
            schema: pa.Schema = pacsv.open_csv(stream, read, parse, convert).schema
        except (OSError, pa.ArrowException) as exc:
            header = _header_only_names(src, dialect)
            if header is None:
                raise _csv_error(src, exc, 0, None, dialect) from exc
            schema = pa.schema([pa.field(name, pa.null()) for name in header])
    try:
        names = schema.names
    except UnicodeDecodeError as exc:  # pyarrow keeps the header's bytes as they are
        raise SourceError(
            f"{src.path}: the CSV header (line 1) has a column name that is not valid UTF-8 "
            f"({_shown(exc.object)}); re-export the file as UTF-8."
        ) from exc
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SourceError(
            f"{src.path}: the CSV header repeats column name(s) {duplicates}; give every column "
            "a unique name."
        )
    binary = [f.name for f in schema if pa.types.is_binary(f.type)]
    if binary:
        found = _locate_csv_value(src, binary[0], _not_utf8, dialect)
        where = f"at data row {found[0]}" if found else f"in the first {size_text(CSV_BLOCK_BYTES)}"
        raise SourceError(
            f"{src.path}: column {binary[0]!r} has bytes that are not valid UTF-8 {where}"
            + (f" (also column(s) {binary[1:]})" if binary[1:] else "")
            + "; re-export the file as UTF-8, or give its encoding in the mapping "
            "(source: {encoding: latin-1})."
        )
    missing = [c for c in text_columns if c not in names]
    if missing:
        raise SourceError(
            f"{src.path}: key/text column(s) {missing} are not in the CSV header; its columns "
            f"are: {_names(schema)}. Check the column names in the mapping."
        )
    return pa.schema([f.with_type(pa.string()) if pa.types.is_null(f.type) else f for f in schema])


def _header_only_names(src: SourceFile, dialect: CsvDialect = _DEFAULT_DIALECT) -> list[str] | None:
    """The column names of a CSV that is just a header line without a final line break (which
    pyarrow takes for an empty file), or of an empty file without a header row (`columns`
    given); None for anything else."""
    try:
        with _open_csv(src, dialect) as stream:
            head: bytes = stream.read(CSV_BLOCK_BYTES + 1)
    except (OSError, pa.ArrowException, SourceError):
        return None
    text = head.removeprefix(b"\xef\xbb\xbf")
    if dialect.column_names is not None:
        return list(dialect.column_names) if not text.strip() else None
    if len(head) > CSV_BLOCK_BYTES or not text.strip() or b"\n" in text or b"\r" in text:
        return None
    try:
        rows = list(csv.reader([text.decode("utf-8")], delimiter=dialect.delimiter, strict=True))
    except (UnicodeDecodeError, csv.Error):
        return None
    return rows[0] if len(rows) == 1 and rows[0] else None


def _csv_batches(
    src: SourceFile,
    columns: Sequence[str] | None,
    text_columns: Collection[str],
    number_columns: Collection[str],
    dialect: CsvDialect = _DEFAULT_DIALECT,
    *,
    block_bytes: int | None = None,
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    full = _csv_schema(src, [*text_columns, *number_columns], dialect)
    schema = select_columns(src, full, columns)
    read, parse, convert = _csv_options(
        {f.name: f.type for f in schema},
        schema.names,
        dialect,
        block_bytes or CSV_STREAM_BLOCK_BYTES,
    )
    numbers = [schema.get_field_index(c) for c in number_columns if c in schema.names]

    def gen() -> Iterator[pa.RecordBatch]:
        rows = 0
        with _open_csv(src, dialect) as stream:
            try:
                reader = pacsv.open_csv(stream, read, parse, convert)
                for batch in reader:
                    for index in numbers:
                        _check_numbers(src, batch, index, rows)
                    yield batch
                    rows += batch.num_rows
            except (OSError, pa.ArrowException) as exc:
                if rows == 0 and _header_only_names(src, dialect) is not None:
                    return  # a header without a line break (or an empty headerless file)
                raise _csv_error(src, exc, rows, full, dialect) from exc

    return schema, gen()


def _check_numbers(src: SourceFile, batch: pa.RecordBatch, index: int, first_row: int) -> None:
    """A number column read as text: every value must be a JSON number (what
    `scan_number_columns` found in the whole file before the run), else SourceError."""
    ok = _json_numbers(batch.column(index))
    if pc.all(ok).as_py() is not False:
        return
    row = int(pc.index(pc.fill_null(ok, True), False).as_py())
    name = batch.schema.field(index).name
    value = batch.column(index)[row].as_py()
    raise SourceError(
        f"{src.path}: column {name!r} has the value {_shown(value)} at data row "
        f"{first_row + row + 1} that is not a number, although the file held only numbers in "
        "that column when the run was planned: the file changed while it was being read. "
        "Rerun once it is complete (with --reprocess for it if part of it was delivered)."
    )


def _json_numbers(column: pa.Array) -> pa.Array:
    """Per value: is it a JSON number (blanks around it allowed)? Null for nulls."""
    return pc.match_substring_regex(pc.utf8_trim_whitespace(column), pattern=JSON_NUMBER)


def scan_number_columns(
    src: SourceFile, columns: Sequence[str], options: SourceOptions | None = None
) -> frozenset[str]:
    """The `columns` of a CSV file in which every non-null value, in the whole file, is written
    as a JSON number (blanks around it allowed): one pass over those columns as text, in
    bounded blocks, that stops once every column has shown some other value. The preflight
    decides with it, per file and column, whether metadata goes out as numbers or as strings
    (pipeline.plan), so every chunk of the file, also after a resume, is typed alike."""
    left = list(dict.fromkeys(columns))
    if not left:
        return frozenset()
    batches = iter_batches(src, columns=left, text_columns=left, options=options)
    try:
        for batch in batches:
            for name in list(left):
                if pc.all(_json_numbers(batch.column(name))).as_py() is False:
                    left.remove(name)
            if not left:
                break
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()
    return frozenset(left)


def _csv_error(
    src: SourceFile,
    exc: Exception,
    rows: int,
    header: pa.Schema | None,
    dialect: CsvDialect = _DEFAULT_DIALECT,
) -> SourceError:
    msg = one_line(exc)
    where = f"at or after data row {rows + 1}"
    m = _CSV_CONVERSION.match(msg)
    if m and header is not None:
        index, typ, detail = int(m.group(1)), m.group(2), m.group(3)
        name = header.names[index] if index < len(header.names) else None
        column = repr(name) if name is not None else f"#{index}"
        if "UTF8" in detail:
            found = _locate_csv_value(src, name, _not_utf8, dialect) if name is not None else None
            return SourceError(
                f"{src.path}: column {column} has bytes that are not valid UTF-8 "
                f"({f'at data row {found[0]}' if found else where}); re-export the file as "
                "UTF-8, or give its encoding in the mapping (source: {encoding: latin-1})."
            )
        value = detail.removeprefix("invalid value ")
        if name is not None and value.startswith("'") and value.endswith("'"):
            found = _locate_csv_value(src, name, _equals(value[1:-1].encode()), dialect)
            where = f"at data row {found[0]}" if found else where
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
        bad = _malformed_row(src, dialect)
        detail = bad or f"{where}: {msg}"
        fields = "the header" if dialect.header else "the source: section's `columns`"
        return SourceError(
            f"{src.path}: malformed CSV {detail}. Every row needs as many fields as {fields} "
            f"(delimiter {dialect.delimiter!r}) and quotes must be balanced: fix the row or "
            "re-export the file."
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


# Locating a bad row (error paths only): re-read the file, column-wise until the batch that holds
# it, then value by value within that batch.


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."


def _malformed_row(src: SourceFile, dialect: CsvDialect = _DEFAULT_DIALECT) -> str | None:
    """Where and how the first row with the wrong number of fields is wrong (pyarrow numbers
    rows only when it reads on one thread, hence this second, single-threaded pass)."""
    found: list[str] = []
    header_rows = 1 if dialect.header else 0

    def handler(row: pacsv.InvalidRow) -> str:
        if not found:
            at = f"data row {row.number - header_rows}" if row.number else "a row"
            found.append(
                f"at {at} (Expected {row.expected_columns} columns, got {row.actual_columns}): "
                f"{_shown(row.text)}"
            )
        return "error"

    names = list(dialect.column_names) if dialect.column_names is not None else None
    read = pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES, use_threads=False, column_names=names)
    parse = pacsv.ParseOptions(
        delimiter=dialect.delimiter, newlines_in_values=True, invalid_row_handler=handler
    )
    try:
        with _open_csv(src, dialect) as stream:
            reader = pacsv.open_csv(stream, read, parse)
            first = reader.schema.names[:1]
        with _open_csv(src, dialect) as stream:
            convert = pacsv.ConvertOptions(
                column_types={first[0]: pa.binary()} if first else None, include_columns=first
            )
            for _ in pacsv.open_csv(stream, read, parse, convert):
                pass
    except (OSError, pa.ArrowException, UnicodeDecodeError, SourceError):
        pass
    return found[0] if found else None


def _not_utf8(column: pa.Array) -> pa.Array | None:
    """Mask of values that are not UTF-8, or None when the whole column is valid."""
    try:
        column.cast(pa.string())
    except pa.ArrowInvalid:
        return pa.array([_undecodable(v) for v in column.to_pylist()], pa.bool_())
    return None


def _undecodable(v: bytes | None) -> bool:
    try:
        if v is not None:
            v.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def _equals(value: bytes) -> Callable[[pa.Array], pa.Array | None]:
    def check(column: pa.Array) -> pa.Array | None:
        hit = pc.equal(column, pa.scalar(value, pa.binary()))
        return hit if pc.any(hit).as_py() else None

    return check


def _locate_csv_value(
    src: SourceFile,
    column: str,
    check: Callable[[pa.Array], pa.Array | None],
    dialect: CsvDialect = _DEFAULT_DIALECT,
) -> tuple[int, object] | None:
    """(1-based data row, value) of the first value of `column` (read as bytes) that `check`
    flags; None if none is found or the file cannot be re-read that far."""
    read, parse, convert = _csv_options({column: pa.binary()}, [column], dialect)
    rows = 0
    try:
        with _open_csv(src, dialect) as stream:
            for batch in pacsv.open_csv(stream, read, parse, convert):
                mask = check(batch.column(0))
                if mask is not None:
                    row = int(pc.index(pc.fill_null(mask, False), True).as_py())
                    return rows + row + 1, batch.column(0)[row].as_py()
                rows += batch.num_rows
    except (OSError, pa.ArrowException, SourceError):
        return None
    return None
