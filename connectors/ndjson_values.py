"""NDJSON values as Python's JSON parser and pyarrow see them, line by line (the slow path).

    build(src, schema, lines, numbers) -> RecordBatch   lines -> one batch of `schema`
    parse(src, lineno, line) -> dict                     one line, numbers kept as written
    size_text(n) -> str                                  "4 MiB", for messages

String columns come from ``json.loads`` with numbers kept as the text they were written as;
the other columns from pyarrow over the same lines (the fast path's types and conversions).
Number columns are read column-wise when they can be checked against pyarrow's exact
decimals, else line by line; a value that is not a JSON number is a SourceError naming the
line (see `connectors.ndjson`).
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from connectors.source_file import SourceFile, one_line
from moesif_backfill.errors import SourceError

#: Types are inferred from this much of the decompressed text (connectors.ndjson).
NDJSON_BLOCK_BYTES = 4 << 20


class _Int(str):
    """A JSON integer kept as the text it was written as."""


class _Float(str):
    """A JSON float kept as the text it was written as."""


_DECODER = json.JSONDecoder(parse_int=_Int, parse_float=_Float)


_EXACT = pa.decimal256(76, 38)


_NUMBER = r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"


def build(
    src: SourceFile,
    schema: pa.Schema,
    lines: list[tuple[int, bytes]],
    numbers: frozenset[str] = frozenset(),
) -> pa.RecordBatch:
    if numbers:  # JSON numbers as written come from Python, the rest from pyarrow if it can
        quick = build_numbers(src, schema, lines, numbers)
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
        obj = parse(src, lineno, line)
        for name in names:
            value = obj.get(name)
            if name in numbers and not (value is None or isinstance(value, _Int | _Float)):
                raise _not_a_number(src, lineno, name, value)
            texts[name].append(to_text(value))
    return {n: pa.array(v, pa.string()) for n, v in texts.items()}


def build_numbers(
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
        f"{json.dumps(restore(value), ensure_ascii=False)[:200]}, which is not a JSON number; "
        f"its values are numbers in the first {size_text(NDJSON_BLOCK_BYTES)} of the file and "
        "are sent as numbers with their digits. Fix the value, or send every value of the "
        "field as text with type: string in the mapping (metadata: {NAME: {column: "
        f"{name}, type: string}}}})."
    )


def parse(src: SourceFile, lineno: int, line: bytes) -> dict[str, Any]:
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


def to_text(value: Any) -> str | None:
    """A JSON value as text: strings as-is, numbers as written, true/false, objects as JSON."""
    if value is None or isinstance(value, str):
        return None if value is None else str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(restore(value), separators=(",", ":"), ensure_ascii=False)


def restore(value: Any) -> Any:
    """Undo the _Int/_Float markers (for values handed back to a JSON parser)."""
    if isinstance(value, _Int):
        return int(value)
    if isinstance(value, _Float):
        return float(value)
    if isinstance(value, dict):
        return {k: restore(v) for k, v in value.items()}
    if isinstance(value, list):
        return [restore(v) for v in value]
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
    obj = parse(src, lineno, line)
    for field in typed:
        if _fails([(lineno, line)], pa.schema([field])) is not None:
            value = to_text(obj.get(field.name))
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
