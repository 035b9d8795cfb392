"""CSV reading: header and types from the first block, then bounded blocks with them fixed.

    csv_schema(src, text_columns, dialect, s3) -> pa.Schema
    csv_batches(src, columns, text_columns, number_columns, dialect, s3, block_bytes=None)
        -> (schema, batches)
    json_numbers(column) -> mask of values written as JSON numbers

See `connectors.readers` for the rules (null convention, number columns, hostile input).
"""

from __future__ import annotations

import csv
from collections.abc import Collection, Iterator, Sequence
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from connectors import csv_dialect
from connectors.columns import names_text, select_columns
from connectors.csv_dialect import CsvDialect, csv_options, open_csv
from connectors.csv_errors import csv_error, locate_csv_value, not_utf8, shown
from connectors.ndjson_values import size_text
from connectors.source_file import SourceFile
from moesif_backfill.errors import SourceError

if TYPE_CHECKING:
    from connectors.s3_store import S3Store

JSON_NUMBER = r"^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$"


def csv_schema(
    src: SourceFile, text_columns: Collection[str], dialect: CsvDialect, s3: S3Store | None
) -> pa.Schema:
    """Header + types inferred from the first block; all-null columns become strings."""
    read, parse, convert = csv_options({c: pa.string() for c in text_columns}, None, dialect)
    with open_csv(src, dialect, s3) as stream:
        try:
            schema: pa.Schema = pacsv.open_csv(stream, read, parse, convert).schema
        except (OSError, pa.ArrowException) as exc:
            header = _header_only_names(src, dialect, s3)
            if header is None:
                raise csv_error(src, exc, 0, None, dialect, s3) from exc
            schema = pa.schema([pa.field(name, pa.null()) for name in header])
    try:
        names = schema.names
    except UnicodeDecodeError as exc:  # pyarrow keeps the header's bytes as they are
        raise SourceError(
            f"{src.path}: the CSV header (line 1) has a column name that is not valid UTF-8 "
            f"({shown(exc.object)}); re-export the file as UTF-8."
        ) from exc
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SourceError(
            f"{src.path}: the CSV header repeats column name(s) {duplicates}; give every column "
            "a unique name."
        )
    binary = [f.name for f in schema if pa.types.is_binary(f.type)]
    if binary:
        found = locate_csv_value(src, binary[0], not_utf8, dialect, s3)
        where = (
            f"at data row {found[0]}"
            if found
            else f"in the first {size_text(csv_dialect.CSV_BLOCK_BYTES)}"
        )
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
            f"are: {names_text(schema)}. Check the column names in the mapping."
        )
    return pa.schema([f.with_type(pa.string()) if pa.types.is_null(f.type) else f for f in schema])


def _header_only_names(
    src: SourceFile, dialect: CsvDialect, s3: S3Store | None
) -> list[str] | None:
    """The column names of a CSV that is just a header line without a final line break (which
    pyarrow takes for an empty file), or of an empty file without a header row (`columns`
    given); None for anything else."""
    try:
        with open_csv(src, dialect, s3) as stream:
            head: bytes = stream.read(csv_dialect.CSV_BLOCK_BYTES + 1)
    except (OSError, pa.ArrowException, SourceError):
        return None
    text = head.removeprefix(b"\xef\xbb\xbf")
    if dialect.column_names is not None:
        return list(dialect.column_names) if not text.strip() else None
    if (
        len(head) > csv_dialect.CSV_BLOCK_BYTES
        or not text.strip()
        or b"\n" in text
        or b"\r" in text
    ):
        return None
    try:
        rows = list(csv.reader([text.decode("utf-8")], delimiter=dialect.delimiter, strict=True))
    except (UnicodeDecodeError, csv.Error):
        return None
    return rows[0] if len(rows) == 1 and rows[0] else None


def csv_batches(  # noqa: PLR0917 - the reader's parameters, passed through
    src: SourceFile,
    columns: Sequence[str] | None,
    text_columns: Collection[str],
    number_columns: Collection[str],
    dialect: CsvDialect,
    s3: S3Store | None,
    *,
    block_bytes: int | None = None,
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    full = csv_schema(src, [*text_columns, *number_columns], dialect, s3)
    schema = select_columns(src, full, columns)
    read, parse, convert = csv_options(
        {f.name: f.type for f in schema},
        schema.names,
        dialect,
        block_bytes or csv_dialect.CSV_STREAM_BLOCK_BYTES,
    )
    numbers = [schema.get_field_index(c) for c in number_columns if c in schema.names]

    def gen() -> Iterator[pa.RecordBatch]:
        rows = 0
        with open_csv(src, dialect, s3) as stream:
            try:
                reader = pacsv.open_csv(stream, read, parse, convert)
                for batch in reader:
                    for index in numbers:
                        _check_numbers(src, batch, index, rows)
                    yield batch
                    rows += batch.num_rows
            except (OSError, pa.ArrowException) as exc:
                if rows == 0 and _header_only_names(src, dialect, s3) is not None:
                    return  # a header without a line break (or an empty headerless file)
                raise csv_error(src, exc, rows, full, dialect, s3) from exc

    return schema, gen()


def _check_numbers(src: SourceFile, batch: pa.RecordBatch, index: int, first_row: int) -> None:
    """A number column read as text: every value must be a JSON number (what
    `scan_number_columns` found in the whole file before the run), else SourceError."""
    ok = json_numbers(batch.column(index))
    if pc.all(ok).as_py() is not False:
        return
    row = int(pc.index(pc.fill_null(ok, True), False).as_py())
    name = batch.schema.field(index).name
    value = batch.column(index)[row].as_py()
    raise SourceError(
        f"{src.path}: column {name!r} has the value {shown(value)} at data row "
        f"{first_row + row + 1} that is not a number, although the file held only numbers in "
        "that column when the run was planned: the file changed while it was being read. "
        "Rerun once it is complete (with --reprocess for it if part of it was delivered)."
    )


def json_numbers(column: pa.Array) -> pa.Array:
    """Per value: is it a JSON number (blanks around it allowed)? Null for nulls."""
    return pc.match_substring_regex(pc.utf8_trim_whitespace(column), pattern=JSON_NUMBER)
