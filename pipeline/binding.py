"""Binding the mapping to each input file's schema, before anything is sent.

Which mapping column is which column of each file (`inspect_file`), how a text file's columns
are read (`type_text_columns`: which are read as text, which metadata columns go out as
numbers, decided from the whole file before its first row is sent), a column missing from
some files, and one type per column across files (`bind_all`). Problems are MappingError.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from connectors.layouts import FileRead, file_schema, holds_only_nulls
from connectors.readers import scan_number_columns
from connectors.s3_store import S3Store
from connectors.schema_drift import FileColumns, unify_types
from connectors.source_file import SourceFile
from moesif_backfill.errors import MappingError
from pipeline.file_plan import FilePlan
from transforms.mapping import MappingSpec
from transforms.schema_match import (
    check_time_type,
    find_columns,
    required_columns,
    resolve_mapping,
)


@dataclass
class Seen:
    """One file as found: its columns (own + partitions) and the mapping's columns in it."""

    src: SourceFile
    schema: pa.Schema  # as the file's first block shows it (text formats: inferred types)
    columns: dict[str, str]  # mapping column -> the file's column
    missing: dict[str, MappingError]  # mapping columns the file does not have
    partitions: dict[str, str | None]  # partition columns (not those the file also has)
    # Text formats (mapping column names): read as text whatever the values look like; of the
    # metadata columns, those whose values go out as JSON numbers with the digits written, and
    # those a pass over the whole file found text in (CSV).
    text: frozenset[str] = frozenset()
    number_text: frozenset[str] = frozenset()
    found_text: frozenset[str] = frozenset()
    as_text: frozenset[str] = frozenset()  # inferred columns read as text (schema drift)

    @property
    def is_text(self) -> bool:
        return self.src.format in ("csv", "ndjson")

    def own(self, name: str) -> bool:
        """Whether the file itself has the mapping column `name` (not a partition value)."""
        phys = self.columns.get(name)
        return phys is not None and phys not in self.partitions


def inspect_file(spec: MappingSpec, src: SourceFile, s3: S3Store | None) -> Seen:
    schema, clashes = file_schema(src, spec.source, s3)
    columns, missing = find_columns(spec, schema, origin=src.path)
    clash = sorted(c for c in clashes if c in columns.values())
    if clash:
        value = src.layout.partition_values()[clash[0]]
        raise MappingError(
            f"{src.path}: {clash[0]!r} is both a column of the file and a partition directory "
            f"({clash[0]}={value}/) above it, and the mapping uses it; a partition value never "
            "overrides a column. Rename the column or the directory level, give the input "
            "below that directory, or (Redshift) unload with PARTITION BY but without INCLUDE."
        )
    partitions = {n: v for n, v in src.layout.partitions if n not in clashes}
    return Seen(src, schema, columns, missing, partitions)


def type_text_columns(spec: MappingSpec, s: Seen, *, complete: bool, s3: S3Store | None) -> None:
    """How a text file's mapped columns are read (no type is guessed into another value):

    - key columns, the string fields' columns (action_name, company_id, user_id,
      subscription_id, session_token, request.*), metadata columns with a `type:` and the
      time column are read as text, exactly as written (an NDJSON time column that holds
      JSON numbers keeps them: epochs);
    - CSV metadata columns (other than booleans and times the first block shows) are typed by
      a pass over the whole file before anything is sent: JSON numbers (sent with the digits
      written) when every value is written as one, else text (strings as written). A file
      already delivered completely is not read again (its rows are not sent);
    - NDJSON metadata fields whose values are JSON numbers are read as the text of each
      number (its digits); JSON keeps every other value's own type.
    """
    if not s.is_text:
        return
    own = [n for n in spec.referenced_columns() if s.own(n)]
    kind = {n: s.schema.field(s.columns[n]).type for n in own}
    text = {*spec.key_columns(), *spec.text_field_columns(), *spec.metadata_columns(typed=True)}
    if s.src.format == "csv" or not _is_number(kind.get(spec.time.column)):
        text.add(spec.time.column)
    text &= set(own)
    metadata = [n for n in spec.metadata_columns(typed=False) if n in kind]
    if s.src.format == "csv":
        candidates = [n for n in metadata if n in text or _number_or_text(kind[n])]
        numbers = set(candidates)
        if not complete:
            found = scan_number_columns(
                s.src, [s.columns[n] for n in candidates], spec.source, s3=s3
            )
            numbers = {n for n in candidates if s.columns[n] in found}
        s.found_text = frozenset(set(candidates) - numbers)
        text |= s.found_text
    else:
        numbers = {n for n in metadata if n not in text and _is_number(kind[n])}
    s.text, s.number_text = frozenset(text - numbers), frozenset(numbers)


def _is_number(t: pa.DataType | None) -> bool:
    return t is not None and (pa.types.is_integer(t) or pa.types.is_floating(t))


def _number_or_text(t: pa.DataType) -> bool:
    """A type the CSV reader infers for numbers or text (not booleans, dates or times)."""
    return _is_number(t) or pa.types.is_string(t) or pa.types.is_null(t)


def bind_all(
    spec: MappingSpec,
    seen: list[Seen],
    notes: list[str],
    complete: set[str],
    s3: S3Store | None,
) -> list[FilePlan]:
    """Bind the mapping to every file with one type per column across files (schema drift,
    connectors.schema_drift); MappingError when a column is absent where it is needed or its
    types cannot be unified. Files in `complete` were delivered completely by an earlier run."""
    _check_missing_columns(spec, seen, notes)
    for s in seen:
        type_text_columns(spec, s, complete=s.src.key in complete, s3=s3)
    keys = set(spec.key_columns())
    unforced = set(spec.metadata_columns(typed=False))
    as_is = {*spec.text_field_columns(), *spec.metadata_columns(typed=True)} - unforced
    unified = unify_types(
        [_file_columns(spec, s, keys) for s in seen],
        keys=keys,
        time_column=spec.time.column,
        holds_only_nulls=lambda i, name: (
            name not in seen[i].found_text
            and holds_only_nulls(seen[i].src, seen[i].columns[name], spec.source, s3)
        ),
        as_is=as_is,
    )
    for i, names in unified.as_text.items():
        seen[i].as_text = names
    return [_bind(spec, s, unified.types) for s in seen]


def _check_missing_columns(spec: MappingSpec, seen: list[Seen], notes: list[str]) -> None:
    """A mapped column absent from some input files stops the run (MappingError, exit 2)
    naming those files, unless every field reading it says `if_missing: omit`; the time and
    transaction_id columns are needed in every file."""
    required = set(required_columns(spec))
    fields = spec.column_fields()
    for name in spec.referenced_columns():
        absent = [s for s in seen if name in s.missing]
        if not absent:
            continue
        users = {label: src for label, src in fields.items() if src.column == name}
        optional = name not in required and all(src.if_missing for src in users.values())
        if optional:
            notes.append(
                f"column {name!r} is missing from {len(absent)} of {len(seen)} file(s) (e.g. "
                f"{absent[0].src.path}): their rows are sent without {', '.join(users)} "
                "(if_missing: omit)"
            )
            continue
        if len(absent) == len(seen) or name in required:
            raise _with_header_hint(spec, absent[0], absent[0].missing[name])
        shown = "\n  ".join(s.src.path for s in absent[:10])
        more = f"\n  ... and {len(absent) - 10} more" if len(absent) > 10 else ""
        raise MappingError(
            f"column {name!r} ({', '.join(users)}) is missing from {len(absent)} of {len(seen)} "
            f"input file(s):\n  {shown}{more}\nTheir rows would be sent without "
            f"{', '.join(users)}. Nothing was sent. If that is right (an older export without "
            f"the column), say so in the mapping: set {' and '.join(users)} to "
            f"{{column: {name}, if_missing: omit}}; otherwise fix the export or leave those "
            "files out."
        )


def _file_columns(spec: MappingSpec, s: Seen, keys: set[str]) -> FileColumns:
    types: dict[str, pa.DataType | None] = {}
    inferred = set()
    for name in spec.referenced_columns():
        phys = s.columns.get(name)
        if phys is None:
            types[name] = None
            continue
        # Key columns of text formats are read as text exactly as written (ID contract v1);
        # a metadata column a pass over the file found text in is text.
        t = s.schema.field(phys).type
        text = (s.is_text and name in keys) or name in s.found_text
        types[name] = pa.string() if text else t
        if s.is_text and phys not in s.partitions:
            inferred.add(name)
    return FileColumns(s.src.path, types, frozenset(inferred), s.number_text)


def _bind(spec: MappingSpec, s: Seen, unified: dict[str, pa.DataType]) -> FilePlan:
    src = s.src
    types: dict[str, pa.DataType] = {}
    fields = {f.name: f for f in s.schema}
    names = [n for n in spec.referenced_columns() if n in s.columns]  # a stable order
    text_cols = list(dict.fromkeys(s.columns[n] for n in names if n in s.text | s.as_text))
    number_cols = list(dict.fromkeys(s.columns[n] for n in names if n in s.number_text))
    for name in spec.referenced_columns():
        target = unified.get(name)
        phys = s.columns.get(name)
        if phys is None:  # only other files have it: nulls of the unified type
            fields[name] = pa.field(name, target or pa.string())
            types[name] = target or pa.string()
        elif phys in text_cols or phys in number_cols:  # read as written: never cast
            fields[phys] = fields[phys].with_type(pa.string())
        elif target is not None and not fields[phys].type.equals(target):
            fields[phys] = fields[phys].with_type(target)
            types[phys] = target
    resolved = resolve_mapping(spec, pa.schema(list(fields.values())), origin=src.path)
    if spec.time.column in s.text:  # the type the time text looks like (epochs need a unit)
        check_time_type(spec, s.schema.field(s.columns[spec.time.column]).type, src.path)
    return FilePlan(
        src=src,
        resolved=resolved,
        text_columns=text_cols,
        rows_estimate=None,
        number_columns=number_cols,
        options=spec.source,
        read=FileRead(
            partitions=s.partitions,
            missing=frozenset(s.missing),
            types=types,
        ),
    )


def _with_header_hint(spec: MappingSpec, s: Seen, exc: MappingError) -> MappingError:
    if s.src.format != "csv" or spec.source.header is not None or spec.source.columns:
        return exc
    return MappingError(
        f"{exc} If the file has no header row (Snowflake and Redshift unloads have none by "
        "default), give the column names in the mapping file: source: {header: false, "
        "columns: [...]} (see docs/warehouse-exports.md)."
    )
