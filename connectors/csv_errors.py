"""CSV error messages that name the file, the column and the data row (error paths only).

    csv_error(src, exc, rows, header, dialect, s3) -> SourceError
    locate_csv_value(src, column, check, dialect, s3) -> (data row, value) | None
    not_utf8(column) -> mask | None
    shown(value) -> str                      a value for a message, cut at 200 characters

Locating a bad row re-reads the file, column-wise until the batch that holds it, then value by
value within that batch.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from connectors import csv_dialect
from connectors.csv_dialect import CsvDialect, csv_options, open_csv
from connectors.ndjson_values import size_text
from connectors.source_file import SourceFile, one_line
from moesif_backfill.errors import SourceError

if TYPE_CHECKING:
    from connectors.s3_store import S3Store

_CSV_CONVERSION = re.compile(
    r"In CSV column #(\d+): (?:Row #\d+: )?CSV conversion error to ([^:]+): (.*)", re.S
)


_SHOWN_CHARS = 200


def csv_error(  # noqa: PLR0917 - one call site each, all needed
    src: SourceFile,
    exc: Exception,
    rows: int,
    header: pa.Schema | None,
    dialect: CsvDialect,
    s3: S3Store | None,
) -> SourceError:
    msg = one_line(exc)
    where = f"at or after data row {rows + 1}"
    m = _CSV_CONVERSION.match(msg)
    if m and header is not None:
        index, typ, detail = int(m.group(1)), m.group(2), m.group(3)
        name = header.names[index] if index < len(header.names) else None
        column = repr(name) if name is not None else f"#{index}"
        if "UTF8" in detail:
            found = locate_csv_value(src, name, not_utf8, dialect, s3) if name is not None else None
            return SourceError(
                f"{src.path}: column {column} has bytes that are not valid UTF-8 "
                f"({f'at data row {found[0]}' if found else where}); re-export the file as "
                "UTF-8, or give its encoding in the mapping (source: {encoding: latin-1})."
            )
        value = detail.removeprefix("invalid value ")
        if name is not None and value.startswith("'") and value.endswith("'"):
            found = locate_csv_value(src, name, _equals(value[1:-1].encode()), dialect, s3)
            where = f"at data row {found[0]}" if found else where
        return SourceError(
            f"{src.path}: column {column} has the value {value} ({where}) that is not a valid "
            f"{typ}. The column type was inferred as {typ} from the first "
            f"{size_text(csv_dialect.CSV_BLOCK_BYTES)} of the file and later values must fit "
            f"it. If {column} is an identifier or key, read it as text (declare it a key/text "
            "column in the mapping); otherwise fix the value in the file."
        )
    if msg.startswith("Empty CSV file"):
        return SourceError(
            f"{src.path}: the CSV file is empty; a CSV input needs a header row with the column "
            "names. Remove the file from the inputs or re-export it with a header."
        )
    if msg.startswith("CSV parse error"):
        bad = _malformed_row(src, dialect, s3)
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


def shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."


def _malformed_row(src: SourceFile, dialect: CsvDialect, s3: S3Store | None) -> str | None:
    """Where and how the first row with the wrong number of fields is wrong (pyarrow numbers
    rows only when it reads on one thread, hence this second, single-threaded pass)."""
    found: list[str] = []
    header_rows = 1 if dialect.header else 0

    def handler(row: pacsv.InvalidRow) -> str:
        if not found:
            at = f"data row {row.number - header_rows}" if row.number else "a row"
            found.append(
                f"at {at} (Expected {row.expected_columns} columns, got {row.actual_columns}): "
                f"{shown(row.text)}"
            )
        return "error"

    names = list(dialect.column_names) if dialect.column_names is not None else None
    read = pacsv.ReadOptions(
        block_size=csv_dialect.CSV_BLOCK_BYTES, use_threads=False, column_names=names
    )
    parse = pacsv.ParseOptions(
        delimiter=dialect.delimiter, newlines_in_values=True, invalid_row_handler=handler
    )
    try:
        with open_csv(src, dialect, s3) as stream:
            reader = pacsv.open_csv(stream, read, parse)
            first = reader.schema.names[:1]
        with open_csv(src, dialect, s3) as stream:
            convert = pacsv.ConvertOptions(
                column_types={first[0]: pa.binary()} if first else None, include_columns=first
            )
            for _ in pacsv.open_csv(stream, read, parse, convert):
                pass
    except (OSError, pa.ArrowException, UnicodeDecodeError, SourceError):
        pass
    return found[0] if found else None


def not_utf8(column: pa.Array) -> pa.Array | None:
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


def locate_csv_value(
    src: SourceFile,
    column: str,
    check: Callable[[pa.Array], pa.Array | None],
    dialect: CsvDialect,
    s3: S3Store | None,
) -> tuple[int, object] | None:
    """(1-based data row, value) of the first value of `column` (read as bytes) that `check`
    flags; None if none is found or the file cannot be re-read that far."""
    read, parse, convert = csv_options({column: pa.binary()}, [column], dialect)
    rows = 0
    try:
        with open_csv(src, dialect, s3) as stream:
            for batch in pacsv.open_csv(stream, read, parse, convert):
                mask = check(batch.column(0))
                if mask is not None:
                    row = int(pc.index(pc.fill_null(mask, False), True).as_py())
                    return rows + row + 1, batch.column(0)[row].as_py()
                rows += batch.num_rows
    except (OSError, pa.ArrowException, SourceError):
        return None
    return None
