"""NDJSON (one JSON object per line) reader: pyarrow fast path, bounded Python slow path.

Schema: inferred once from the first NDJSON_BLOCK_BYTES of decompressed text with pyarrow's JSON
inference, then fixed for the whole file (fields seen only later are ignored unless requested as
text columns). Columns with only nulls there become strings; text columns are strings; a column
whose JSON values mix kinds in the first block (number and string) is read as a string.

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
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from connectors.sources import IO_BUFFER_BYTES, SourceFile, one_line, open_input
from moesif_backfill.errors import SourceError

NDJSON_BLOCK_BYTES = 4 << 20
SLOW_BATCH_BYTES = 16 << 20

_CHANGED = re.compile(r"Column\(/([^/)]*)[^)]*\) changed from (\w+) to (\w+) in row (\d+)")


class _Int(str):
    """A JSON integer kept as the text it was written as."""


class _Float(str):
    """A JSON float kept as the text it was written as."""


# One decoder for every line: json.loads(..., parse_int=...) would build a new one per call.
_DECODER = json.JSONDecoder(parse_int=_Int, parse_float=_Float)


@dataclass(frozen=True)
class Inferred:
    schema: pa.Schema
    slow: bool  # the fast path is known to fail (numbers in string columns in the first block)


def infer_schema(src: SourceFile, text_columns: Collection[str] = ()) -> Inferred:
    """Schema of `src` from its first block; `text_columns` are strings (added if unseen)."""
    block = _first_block(src)
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
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """`number_columns` are read like text columns (a number as the text it was written as),
    and each of their values must be a JSON number (or null): SourceError naming the line."""
    inferred = infer_schema(src, [*text_columns, *number_columns])
    schema = inferred.schema
    if columns is not None:
        missing = [c for c in columns if schema.get_field_index(c) < 0]
        if missing:
            raise SourceError(
                f"{src.path}: field(s) {', '.join(map(repr, missing))} do not appear in the first "
                f"{size_text(NDJSON_BLOCK_BYTES)} of the file (fields seen: "
                f"{', '.join(schema.names[:40]) or 'none'}). Check the names (case-sensitive); "
                "a field that only appears in later lines can be read as a key/text column."
            )
        schema = pa.schema([schema.field(c) for c in columns])
    numbers = frozenset(c for c in number_columns if c in schema.names)
    if inferred.slow or numbers:  # pyarrow cannot give the text of a number
        return schema, _slow_batches(src, schema, 0, batch_rows, numbers)
    return schema, _fast_batches(src, schema, batch_rows)


# --------------------------------------------------------------------------------------------
# inference


def _infer(data: bytes) -> pa.Schema:
    options = pajson.ReadOptions(block_size=max(len(data), 1) + 1)
    schema: pa.Schema = pajson.read_json(io.BytesIO(data), read_options=options).schema
    return schema


def _infer_rewritten(src: SourceFile, block: list[tuple[int, bytes]], text: set[str]) -> pa.Schema:
    """Inference when pyarrow rejects the raw block: mixed-kind columns become text."""
    objects = [_parse(src, lineno, line) for lineno, line in block]
    as_text = set(text)
    for _ in range(1 + len({key for obj in objects for key in obj})):
        lines = [
            json.dumps({k: _to_text(v) if k in as_text else _restore(v) for k, v in obj.items()})
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


# --------------------------------------------------------------------------------------------
# reading


def _iter_lines(src: SourceFile) -> Generator[tuple[int, bytes], None, None]:
    """(line number, line without newline) for every line, reading IO_BUFFER_BYTES at a time."""
    lineno = 0
    pending: list[bytes] = []
    with open_input(src) as stream:
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


def _first_block(src: SourceFile) -> list[tuple[int, bytes]]:
    block: list[tuple[int, bytes]] = []
    size = 0
    lines = _iter_lines(src)
    try:
        for lineno, line in lines:
            if line and not line.isspace():
                block.append((lineno, line))
                size += len(line) + 1
                if size >= NDJSON_BLOCK_BYTES:
                    break
    finally:
        lines.close()
    return block


def _fast_batches(src: SourceFile, schema: pa.Schema, batch_rows: int) -> Iterator[pa.RecordBatch]:
    rows = 0
    read = pajson.ReadOptions(block_size=NDJSON_BLOCK_BYTES)
    parse = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    with open_input(src) as stream:
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
    yield from _slow_batches(src, schema, rows, batch_rows)


def _slow_batches(
    src: SourceFile,
    schema: pa.Schema,
    skip_rows: int,
    batch_rows: int,
    numbers: frozenset[str] = frozenset(),
) -> Iterator[pa.RecordBatch]:
    """Bounded Python reader: at most batch_rows rows / ~SLOW_BATCH_BYTES per batch."""
    seen = 0
    pending: list[tuple[int, bytes]] = []
    size = 0
    for lineno, line in _iter_lines(src):
        if not line or line.isspace():
            continue
        seen += 1
        if seen <= skip_rows:
            continue
        pending.append((lineno, line))
        size += len(line) + 1
        if len(pending) >= batch_rows or size >= SLOW_BATCH_BYTES:
            yield _build(src, schema, pending, numbers)
            pending, size = [], 0
    if pending:
        yield _build(src, schema, pending, numbers)


def _build(
    src: SourceFile,
    schema: pa.Schema,
    lines: list[tuple[int, bytes]],
    numbers: frozenset[str] = frozenset(),
) -> pa.RecordBatch:
    if numbers:  # JSON numbers as written come from Python, the rest from pyarrow if it can
        quick = _build_numbers(src, schema, lines, numbers)
        if quick is not None:
            return quick
    text_names = [f.name for f in schema if pa.types.is_string(f.type)]
    typed = pa.schema([f for f in schema if not pa.types.is_string(f.type)])
    arrays = _python_texts(src, lines, text_names, numbers)
    if len(typed):
        try:
            table = _read_typed(lines, typed)
        except pa.ArrowException as exc:
            raise _typed_error(src, exc, lines, typed) from exc
        if table.num_rows != len(lines):
            raise SourceError(
                f"{src.path}: lines {lines[0][0]}-{lines[-1][0]} hold {table.num_rows} JSON "
                f"objects for {len(lines)} lines; put exactly one object on each line."
            )
        for name in typed.names:
            arrays[name] = table.column(name).combine_chunks()
    return pa.RecordBatch.from_arrays([arrays[f.name] for f in schema], schema=schema)


def _python_texts(
    src: SourceFile, lines: list[tuple[int, bytes]], names: list[str], numbers: frozenset[str]
) -> dict[str, pa.Array]:
    """`names` as text from Python's JSON parser (numbers as written); every line is decoded,
    so bytes that are not UTF-8 and invalid JSON are reported with their line number."""
    texts: dict[str, list[str | None]] = {name: [] for name in names}
    for lineno, line in lines:
        obj = _parse(src, lineno, line)
        for name in names:
            value = obj.get(name)
            if name in numbers and not (value is None or isinstance(value, _Int | _Float)):
                raise _not_a_number(src, lineno, name, value)
            texts[name].append(_to_text(value))
    return {n: pa.array(v, pa.string()) for n, v in texts.items()}


# Number fields are read with their exact value too, to check the text taken from the line.
_EXACT = pa.decimal256(76, 38)
_NUMBER = r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"


def _build_numbers(
    src: SourceFile, schema: pa.Schema, lines: list[tuple[int, bytes]], numbers: frozenset[str]
) -> pa.RecordBatch | None:
    """Column-wise: pyarrow reads every field (number fields as exact decimals), and each
    number field's text is taken from the raw line by a regex, kept only when the field's key
    occurs once in the line and the text has exactly the value pyarrow read. None when any row
    does not fit (a string in a number field, more than 38 integer or fractional digits, a key
    written with escapes, bytes that are not UTF-8, ...): the caller's per-line Python path
    then reads the batch, and names the line of a bad value."""
    try:
        raw = pa.array([line for _, line in lines], pa.binary()).cast(pa.string())
        exact = pa.schema([f.with_type(_EXACT) if f.name in numbers else f for f in schema])
        table = _read_typed(lines, exact)
        if table.num_rows != len(lines):
            return None
        arrays = []
        for field in schema:
            column = table.column(field.name).combine_chunks()
            if field.name in numbers:
                text = _number_text(raw, field.name, column)
                if text is None:
                    return None
                column = text
            column.validate(full=True)
            arrays.append(column)
    except pa.ArrowException:
        return None
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _number_text(raw: pa.Array, name: str, exact: pa.Array) -> pa.Array | None:
    """The text of field `name` in each line, or None unless every row checks out."""
    key = re.escape(json.dumps(name, ensure_ascii=False)) + r"\s*:"
    found = pc.extract_regex(raw, pattern=f"{key}\\s*(?P<n>{_NUMBER})").flatten()[0]
    once = pc.equal(pc.count_substring_regex(raw, pattern=key), 1)
    same = pc.and_(once, pc.equal(found.cast(_EXACT), exact))
    ok = pc.if_else(exact.is_null(), found.is_null(), same)
    return found if pc.all(pc.fill_null(ok, False)).as_py() else None


def _not_a_number(src: SourceFile, lineno: int, name: str, value: Any) -> SourceError:
    return SourceError(
        f"{src.path}: line {lineno}: field {name!r} has the value "
        f"{json.dumps(_restore(value), ensure_ascii=False)[:200]}, which is not a JSON number; "
        f"its values are numbers in the first {size_text(NDJSON_BLOCK_BYTES)} of the file and "
        "are sent as numbers with their digits. Fix the value, or send every value of the "
        "field as text with type: string in the mapping (metadata: {NAME: {column: "
        f"{name}, type: string}}}})."
    )


def _parse(src: SourceFile, lineno: int, line: bytes) -> dict[str, Any]:
    try:
        text = line.decode()
        obj = _DECODER.decode(text[1:] if text.startswith("\ufeff") else text)
    except UnicodeDecodeError as exc:
        raise SourceError(
            f"{src.path}: line {lineno} is not valid UTF-8 (byte {exc.start + 1}); re-export the "
            "file as UTF-8."
        ) from exc
    except json.JSONDecodeError as exc:
        raise SourceError(
            f"{src.path}: line {lineno}, column {exc.colno}: invalid JSON ({exc.msg}). NDJSON "
            "needs one complete JSON object per line: fix or remove that line."
        ) from exc
    except RecursionError as exc:
        raise SourceError(
            f"{src.path}: line {lineno} nests JSON arrays/objects too deeply to be read; "
            "flatten that value or leave it out."
        ) from exc
    if not isinstance(obj, dict):
        raise SourceError(
            f"{src.path}: line {lineno} is a JSON {type(obj).__name__}, not an object; NDJSON "
            "needs one JSON object per line: fix or remove that line."
        )
    return obj


def _to_text(value: Any) -> str | None:
    """A JSON value as text: strings as-is, numbers as written, true/false, objects as JSON."""
    if value is None or isinstance(value, str):
        return None if value is None else str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(_restore(value), separators=(",", ":"), ensure_ascii=False)


def _restore(value: Any) -> Any:
    """Undo the _Int/_Float markers (for values handed back to a JSON parser)."""
    if isinstance(value, _Int):
        return int(value)
    if isinstance(value, _Float):
        return float(value)
    if isinstance(value, dict):
        return {k: _restore(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore(v) for v in value]
    return value


def _read_typed(lines: list[tuple[int, bytes]], typed: pa.Schema) -> pa.Table:
    data = b"".join(line + b"\n" for _, line in lines)
    read = pajson.ReadOptions(block_size=len(data) + 1, use_threads=False)
    parse = pajson.ParseOptions(explicit_schema=typed, unexpected_field_behavior="ignore")
    table: pa.Table = pajson.read_json(io.BytesIO(data), read_options=read, parse_options=parse)
    return table


def _fails(lines: list[tuple[int, bytes]], typed: pa.Schema) -> str | None:
    try:
        _read_typed(lines, typed)
    except pa.ArrowException as exc:
        return str(exc)
    return None


def _typed_error(
    src: SourceFile, exc: Exception, lines: list[tuple[int, bytes]], typed: pa.Schema
) -> SourceError:
    """Find the first offending line (bisection; rows are independent) and field."""
    advice = (
        f"its type was inferred from the first {size_text(NDJSON_BLOCK_BYTES)} of the file and "
        "later values must fit it. If the field is an identifier or key, read it as text "
        "(declare it a key/text column in the mapping); otherwise fix the data."
    )
    lo, hi = 0, len(lines)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _fails(lines[lo:mid], typed) is not None:
            hi = mid
        else:
            lo = mid
    detail = _fails(lines[lo : lo + 1], typed)
    if detail is None:
        return SourceError(
            f"{src.path}: lines {lines[0][0]}-{lines[-1][0]}: a value does not fit the expected "
            f"types ({one_line(exc)}; expected {one_line(typed)}); {advice}"
        )
    lineno, line = lines[lo]
    obj = _parse(src, lineno, line)
    for field in typed:
        if _fails([(lineno, line)], pa.schema([field])) is not None:
            value = _to_text(obj.get(field.name))
            return SourceError(
                f"{src.path}: line {lineno}: field {field.name!r} has the value {value} that is "
                f"not a valid {field.type}; {advice}"
            )
    return SourceError(f"{src.path}: line {lineno}: {one_line(detail)}; {advice}")


def size_text(n: int) -> str:
    """Human-readable byte count: 4 MB, 16 KB."""
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20} MB"
    if n >= 1 << 10:
        return f"{n >> 10} KB"
    return f"{n} bytes"
