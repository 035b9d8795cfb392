"""NDJSON (one JSON object per line) reader: pyarrow fast path, bounded Python slow path.

Schema: inferred once from the first NDJSON_BLOCK_BYTES (connectors.ndjson_values) of
decompressed text with pyarrow's JSON inference, then fixed for the whole file (fields seen
only later are ignored unless requested as text columns). Columns with only nulls there
become strings; text columns are strings; a column whose JSON values mix kinds in the first
block (number and string) is read as a string.

Fast path: pyarrow.json.open_json with that schema as explicit_schema. pyarrow cannot read a JSON
number into a string column, and does not give line numbers, so on any error the file falls
back, from the first row not yet returned, to the slow path: lines are read in bounded blocks,
string columns are taken from ``json.loads(line, parse_int=..., parse_float=...)`` so that a
number comes back as its text exactly as written ("1.50" stays "1.50"), and the other columns are
parsed by pyarrow from the same lines (identical types and conversions to the fast path).
A file whose text columns hold numbers in the first block goes straight to the slow path.

Number columns (`number_columns`: metadata fields whose values are JSON numbers) come back as
the text each number was written as ("12.50", "12345678901234567890", "1e5"), never through a
double. They take the slow path's line blocks, but column-wise: pyarrow reads every field (the
number fields as exact decimals) and a regex takes each number's text from its line, checked
against that exact value; a block where any row does not check out is read line by line in
Python instead, which also reports a value that is not a JSON number, naming the line.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Collection, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.json as pajson

from connectors import ndjson_values
from connectors.file_access import open_input
from connectors.ndjson_values import build, parse, restore, size_text, to_text
from connectors.source_file import IO_BUFFER_BYTES, SourceFile, one_line
from moesif_backfill.errors import SourceError

if TYPE_CHECKING:
    from connectors.s3_store import S3Store


SLOW_BATCH_BYTES = 16 << 20

_CHANGED = re.compile(r"Column\(/([^/)]*)[^)]*\) changed from (\w+) to (\w+) in row (\d+)")


@dataclass(frozen=True)
class Inferred:
    schema: pa.Schema
    slow: bool  # the fast path is known to fail (numbers in string columns in the first block)


def infer_schema(
    src: SourceFile, text_columns: Collection[str] = (), s3: S3Store | None = None
) -> Inferred:
    """Schema of `src` from its first block; `text_columns` are strings (added if unseen)."""
    block = _first_block(src, s3)
    data = b"".join(line + b"\n" for _, line in block)
    text = set(text_columns)
    slow = False
    try:
        raw = _infer(data)
    except pa.ArrowInvalid:
        raw, slow = _infer_rewritten(src, block, text), True
    fields = []
    for field in raw:
        if field.name in text:
            t = field.type
            # pyarrow reads a JSON string into a string column (also one it took for a
            # timestamp), but not a number or a boolean: those need the slow path
            as_json_string = pa.types.is_string(t) or pa.types.is_timestamp(t)
            slow = slow or not (as_json_string or pa.types.is_null(t))
            fields.append(field.with_type(pa.string()))
        else:
            fields.append(field.with_type(_no_null(field.type)))
    seen = set(raw.names)
    fields += [pa.field(c, pa.string()) for c in sorted(text - seen)]
    return Inferred(pa.schema(fields), slow)


def ndjson_batches(
    src: SourceFile,
    columns: Sequence[str] | None,
    text_columns: Collection[str],
    batch_rows: int,
    *,
    number_columns: Collection[str] = (),
    s3: S3Store | None = None,
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """`number_columns` are read like text columns (a number as the text it was written as),
    and each of their values must be a JSON number (or null): SourceError naming the line."""
    inferred = infer_schema(src, [*text_columns, *number_columns], s3)
    schema = inferred.schema
    if columns is not None:
        missing = [c for c in columns if schema.get_field_index(c) < 0]
        if missing:
            raise SourceError(
                f"{src.path}: field(s) {', '.join(map(repr, missing))} do not appear in the first "
                f"{size_text(ndjson_values.NDJSON_BLOCK_BYTES)} of the file (fields seen: "
                f"{', '.join(schema.names[:40]) or 'none'}). Check the names (case-sensitive); "
                "a field that only appears in later lines can be read as a key/text column."
            )
        schema = pa.schema([schema.field(c) for c in columns])
    numbers = frozenset(c for c in number_columns if c in schema.names)
    if inferred.slow or numbers:  # pyarrow cannot give the text of a number
        return schema, _slow_batches(src, schema, 0, batch_rows, numbers, s3)
    return schema, _fast_batches(src, schema, batch_rows, s3)


def _infer(data: bytes) -> pa.Schema:
    options = pajson.ReadOptions(block_size=max(len(data), 1) + 1)
    schema: pa.Schema = pajson.read_json(io.BytesIO(data), read_options=options).schema
    return schema


def _infer_rewritten(src: SourceFile, block: list[tuple[int, bytes]], text: set[str]) -> pa.Schema:
    """Inference when pyarrow rejects the raw block: mixed-kind columns become text."""
    objects = [parse(src, lineno, line) for lineno, line in block]
    as_text = set(text)
    for _ in range(1 + len({key for obj in objects for key in obj})):
        lines = [
            json.dumps({k: to_text(v) if k in as_text else restore(v) for k, v in obj.items()})
            for obj in objects
        ]
        try:
            return _infer("\n".join(lines).encode() + b"\n")
        except pa.ArrowInvalid as exc:
            m = _CHANGED.search(str(exc))
            column = _unescape(m.group(1)) if m else None
            if column is None or column in as_text:
                raise SourceError(
                    f"{src.path}: cannot infer the field types from the first lines "
                    f"({one_line(exc)}); check that every line is a JSON object with consistent "
                    "field types."
                ) from exc
            as_text.add(column)
    raise SourceError(f"{src.path}: cannot infer the field types from the first lines.")


def _no_null(t: pa.DataType) -> pa.DataType:
    """Null types (no value seen yet) become strings, also inside structs and lists."""
    if pa.types.is_null(t):
        return pa.string()
    if pa.types.is_struct(t):
        children = [t.field(i) for i in range(t.num_fields)]
        return pa.struct([c.with_type(_no_null(c.type)) for c in children])
    if pa.types.is_list(t):
        return pa.list_(t.value_field.with_type(_no_null(t.value_type)))
    return t


def _unescape(pointer: str) -> str:
    return pointer.replace("~1", "/").replace("~0", "~")


def _iter_lines(src: SourceFile, s3: S3Store | None) -> Generator[tuple[int, bytes], None, None]:
    """(line number, line without newline) for every line, reading IO_BUFFER_BYTES at a time."""
    lineno = 0
    pending: list[bytes] = []
    with open_input(src, s3) as stream:
        while True:
            try:
                chunk: bytes = stream.read(IO_BUFFER_BYTES)
            except (OSError, pa.ArrowException) as exc:
                raise SourceError(
                    f"{src.path}: cannot read or decompress the data after {lineno} complete "
                    f"line(s) ({one_line(exc)}); the file is probably truncated or corrupt: "
                    "re-download or re-export it."
                ) from exc
            if not chunk:
                break
            if b"\n" not in chunk:
                pending.append(chunk)
                continue
            pending.append(chunk)
            lines = b"".join(pending).split(b"\n")
            pending = [lines.pop()]
            for line in lines:
                lineno += 1
                yield lineno, line
    tail = b"".join(pending)
    if tail:
        yield lineno + 1, tail


def _first_block(src: SourceFile, s3: S3Store | None) -> list[tuple[int, bytes]]:
    block: list[tuple[int, bytes]] = []
    size = 0
    lines = _iter_lines(src, s3)
    try:
        for lineno, line in lines:
            if line and not line.isspace():
                block.append((lineno, line))
                size += len(line) + 1
                if size >= ndjson_values.NDJSON_BLOCK_BYTES:
                    break
    finally:
        lines.close()
    return block


def _fast_batches(
    src: SourceFile, schema: pa.Schema, batch_rows: int, s3: S3Store | None
) -> Iterator[pa.RecordBatch]:
    rows = 0
    read = pajson.ReadOptions(block_size=ndjson_values.NDJSON_BLOCK_BYTES)
    parse = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    with open_input(src, s3) as stream:
        try:
            reader = pajson.open_json(stream, read_options=read, parse_options=parse)
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    return
                # pyarrow's JSON reader does not check UTF-8: bytes that are not UTF-8 would
                # become part of a key's ID or break the action. The slow path names the line.
                batch.validate(full=True)
                yield batch
                rows += batch.num_rows
        except (OSError, pa.ArrowException):
            pass  # the slow path re-reads from row `rows` and reports errors with line numbers
    yield from _slow_batches(src, schema, rows, batch_rows, frozenset(), s3)


def _slow_batches(  # noqa: PLR0917 - the reader's state, passed through
    src: SourceFile,
    schema: pa.Schema,
    skip_rows: int,
    batch_rows: int,
    numbers: frozenset[str] = frozenset(),
    s3: S3Store | None = None,
) -> Iterator[pa.RecordBatch]:
    """Bounded Python reader: at most batch_rows rows / ~SLOW_BATCH_BYTES per batch."""
    seen = 0
    pending: list[tuple[int, bytes]] = []
    size = 0
    for lineno, line in _iter_lines(src, s3):
        if not line or line.isspace():
            continue
        seen += 1
        if seen <= skip_rows:
            continue
        pending.append((lineno, line))
        size += len(line) + 1
        if len(pending) >= batch_rows or size >= SLOW_BATCH_BYTES:
            yield build(src, schema, pending, numbers)
            pending, size = [], 0
    if pending:
        yield build(src, schema, pending, numbers)
