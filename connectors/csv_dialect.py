"""How a CSV file is written (`CsvDialect`), and opening it for pyarrow's CSV reader.

    dialect_of(src, options) -> CsvDialect      from the `source:` section and the file's layout
    open_csv(src, dialect, s3) -> pa.NativeFile  the decompressed stream, transcoded to UTF-8
    csv_options(column_types, include_columns, dialect, block_size) -> pyarrow CSV options

CSV_BLOCK_BYTES (types are inferred from the first block) and CSV_STREAM_BLOCK_BYTES (blocks
once the types are fixed) are read from this module at each use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.csv as pacsv

from connectors.file_access import open_input
from connectors.source_file import SourceFile
from transforms.source_options import DEFAULT_OPTIONS, SourceOptions

if TYPE_CHECKING:
    from connectors.s3_store import S3Store

CSV_BLOCK_BYTES = 4 << 20


CSV_STREAM_BLOCK_BYTES = 1 << 20


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


DEFAULT_DIALECT = CsvDialect()


def dialect_of(src: SourceFile, options: SourceOptions | None) -> CsvDialect:
    opts = options or DEFAULT_OPTIONS
    if opts.is_default() and src.layout.delimiter is None:
        return DEFAULT_DIALECT
    return CsvDialect(
        delimiter=opts.delimiter or src.layout.delimiter or ",",
        column_names=None if opts.has_header else opts.columns,
        null_values=tuple(opts.csv_null_values()),
        encoding=opts.encoding,
    )


def open_csv(src: SourceFile, dialect: CsvDialect, s3: S3Store | None) -> pa.NativeFile:
    """`open_input`, transcoded to UTF-8 when the file is in another encoding."""
    stream = open_input(src, s3)
    if dialect.encoding == "utf-8":
        return stream
    return pa.transcoding_input_stream(stream, dialect.encoding, "utf-8")


def csv_options(
    column_types: dict[str, pa.DataType],
    include_columns: Sequence[str] | None = None,
    dialect: CsvDialect = DEFAULT_DIALECT,
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
