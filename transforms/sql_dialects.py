"""The SQL pieces of ID contract v1 (docs/transaction-id.md) in each warehouse's dialect.

`transforms.id_sql` assembles the query; this module only says how each step is spelled. Every
function here is from the warehouse's own documentation:

DuckDB (executed by the tests, tests/test_id_sql.py), https://duckdb.org/docs/sql/functions/:
  sha1(blob) -> lower-case hex text; from_hex(text) -> BLOB; encode(text) -> UTF-8 BLOB;
  strlen(text) counts bytes; timezone(zone, TIMESTAMP) -> TIMESTAMPTZ read in `zone`,
  timezone(zone, TIMESTAMPTZ) -> that instant's wall-clock TIMESTAMP in `zone` (ICU);
  epoch_ns / make_timestamp(microseconds); strftime('%f') = six fractional digits.
Snowflake (not executed here):
  UUID_STRING(<uuid>, <name>) with a namespace UUID and a name is documented to return a
  version 5 (name-based) UUID: RFC 4122 UUIDv5, SHA-1 over the namespace bytes and the name
  (https://docs.snowflake.com/en/sql-reference/functions/uuid_string; its example
  UUID_STRING('fe971b24-9572-4005-b22f-351e9c09274d', 'foo') = 'dc0b6f65-fca6-5b4b-9d37-
  ccc3fde1f3e2' is exactly Python's uuid.uuid5 of the same namespace and name). The hash is
  therefore the documented UUID_STRING, not SHA1_BINARY (documented for a string message,
  before which the 16 raw namespace bytes cannot be put);
  OCTET_LENGTH (bytes), CONVERT_TIMEZONE(src_tz, target_tz, TIMESTAMP_NTZ),
  TO_VARCHAR(ts, 'YYYY-MM-DD"T"HH24:MI:SS.FF6"Z"'), DATEADD / DATEDIFF.
BigQuery (not executed here), https://cloud.google.com/bigquery/docs/reference/standard-sql/:
  SHA1(BYTES) -> BYTES (hash_functions#sha1); TO_HEX(BYTES) -> lower-case hex STRING and
  FROM_HEX(STRING) -> BYTES (string_functions#to_hex, #from_hex); CAST(STRING AS BYTES) is
  UTF-8; BYTE_LENGTH; FORMAT('%s', ...); DATETIME(TIMESTAMP, zone) is the wall-clock time of
  an instant in `zone`; FORMAT_DATETIME('%E6S') = seconds with six fractional digits;
  SAFE.DATETIME_ADD returns NULL instead of an error outside years 1..9999.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal

DialectName = Literal["duckdb", "snowflake", "bigquery"]
DIALECTS: tuple[DialectName, ...] = ("duckdb", "snowflake", "bigquery")
PLACEHOLDER_TABLE = "export_table"  # `sql --table` when not given: replace it with the table

# The 17th hex digit of the UUID is the high nibble of byte 8: RFC 4122's variant keeps its low
# two bits and sets the top two to 10, i.e. 0..f -> 8 9 a b 8 9 a b ...; a lookup by position.
_HEX_DIGITS = "0123456789abcdef"
_VARIANT_DIGITS = "89ab89ab89ab89ab"
MIN_UTC = "0001-01-01 00:00:00"
MAX_UTC = "9999-12-31 23:59:59.999999"


def literal(text: str) -> str:
    """A SQL string literal of `text` (only ever our own constants: zone names, formats)."""
    if "'" in text or "\\" in text:
        raise ValueError(f"unexpected quote or backslash in a SQL constant: {text!r}")
    return f"'{text}'"


@dataclass(frozen=True)
class Dialect:
    """How one warehouse spells each step of canon() and uuid5()."""

    name: DialectName

    # -- identifiers and text -----------------------------------------------------------------

    def quote(self, ident: str) -> str:
        """A quoted identifier: any name, any case, kept exactly."""
        if self.name == "bigquery":
            return "`" + ident.replace("\\", "\\\\").replace("`", "\\`") + "`"
        return '"' + ident.replace('"', '""') + '"'

    def text(self, expr: str) -> str:
        """A value that is already its canon text (text columns)."""
        return f"CAST({expr} AS {'STRING' if self.name == 'bigquery' else 'VARCHAR'})"

    def integer_text(self, expr: str) -> str:
        """Decimal digits with an optional "-" (integers, decimals of scale 0)."""
        if self.name == "snowflake":
            return f"TO_VARCHAR({expr})"
        return self.text(expr)

    def byte_length(self, expr: str) -> str:
        """The length of a text in UTF-8 bytes, as text."""
        fn = {"duckdb": "strlen", "snowflake": "OCTET_LENGTH", "bigquery": "BYTE_LENGTH"}
        return self.integer_text(f"{fn[self.name]}({expr})")

    def date_text(self, expr: str) -> str:
        """'YYYY-MM-DD'."""
        if self.name == "snowflake":
            return f"TO_VARCHAR({expr}, 'YYYY-MM-DD')"
        if self.name == "bigquery":
            return f"FORMAT_DATE('%Y-%m-%d', {expr})"
        return f"strftime({expr}, '%Y-%m-%d')"

    # -- timestamps (naive values below are UTC or wall-clock times, microsecond precision) -----

    def naive_micros(self, expr: str, *, nanos: bool) -> str:
        """A timestamp column without a zone as a naive timestamp, sub-microseconds floored."""
        if self.name == "duckdb":
            if nanos:  # a cast would round: floor the epoch nanoseconds instead
                return _duckdb_floor_micros(expr)
            return f"CAST({expr} AS TIMESTAMP)"
        return expr  # Snowflake TIMESTAMP_NTZ, BigQuery DATETIME

    def utc_naive(self, expr: str, *, nanos: bool) -> str:
        """A timestamp column with a zone or offset as the naive UTC time of its instant."""
        if self.name == "duckdb":
            if nanos:
                return _duckdb_floor_micros(expr)
            return f"timezone('UTC', {expr})"
        if self.name == "snowflake":
            return f"CAST(CONVERT_TIMEZONE('UTC', {expr}) AS TIMESTAMP_NTZ)"
        return f"DATETIME({expr}, 'UTC')"

    def wall_clock(self, utc: str, zone: str) -> str:
        """The wall-clock time in `zone` of the instant whose naive UTC time is `utc`."""
        z = literal(zone)
        if self.name == "duckdb":
            return f"timezone({z}, timezone('UTC', {utc}))"
        if self.name == "snowflake":
            return f"CONVERT_TIMEZONE('UTC', {z}, {utc})"
        return f"DATETIME(TIMESTAMP({utc}, 'UTC'), {z})"

    def add_days(self, expr: str, days: int) -> str:
        if self.name == "duckdb":
            return f"({expr} + INTERVAL ({days}) DAY)"
        if self.name == "snowflake":
            return f"DATEADD(day, {days}, {expr})"
        return f"SAFE.DATETIME_ADD({expr}, INTERVAL {days} DAY)"

    def seconds_between(self, start: str, end: str) -> str:
        """Whole seconds from `start` to `end` (both with the same fraction: exact)."""
        if self.name == "duckdb":
            return f"date_diff('second', {start}, {end})"
        if self.name == "snowflake":
            return f"DATEDIFF(second, {start}, {end})"
        return f"DATETIME_DIFF({end}, {start}, SECOND)"

    def minus_seconds(self, expr: str, seconds: str) -> str:
        if self.name == "duckdb":
            return f"({expr} - to_seconds({seconds}))"
        if self.name == "snowflake":
            return f"DATEADD(second, -({seconds}), {expr})"
        return f"SAFE.DATETIME_SUB({expr}, INTERVAL {seconds} SECOND)"

    def in_utc_range(self, expr: str) -> str:
        """`expr` (naive) lies within years 0001..9999."""
        lo, hi = self.naive_literal(MIN_UTC), self.naive_literal(MAX_UTC)
        return f"{expr} BETWEEN {lo} AND {hi}"

    def naive_literal(self, text: str) -> str:
        if self.name == "snowflake":
            return f"CAST({literal(text)} AS TIMESTAMP_NTZ)"
        if self.name == "bigquery":
            return f"DATETIME {literal(text)}"
        return f"TIMESTAMP {literal(text)}"

    def utc_text(self, expr: str) -> str:
        """A naive UTC time as 'YYYY-MM-DDTHH:MM:SS.ffffffZ'."""
        if self.name == "snowflake":
            return f'TO_VARCHAR({expr}, \'YYYY-MM-DD"T"HH24:MI:SS.FF6"Z"\')'
        if self.name == "bigquery":
            return f"FORMAT_DATETIME('%Y-%m-%dT%H:%M:%E6SZ', {expr})"
        return f"strftime({expr}, '%Y-%m-%dT%H:%M:%S.%fZ')"

    # -- uuid5 ----------------------------------------------------------------------------------

    def uuid5_note(self) -> str:
        """One comment line for the query: how it computes uuid5, and whether it was run."""
        if self.name == "snowflake":
            return (
                "uuid5: UUID_STRING(namespace, name), Snowflake's version 5 (named) UUID; "
                "not executed by moesif-backfill's tests"
            )
        if self.name == "bigquery":
            return (
                "uuid5: TO_HEX(SHA1(namespace bytes || name as UTF-8 BYTES)), FORMAT with the "
                "version and variant digits; not executed by moesif-backfill's tests"
            )
        return (
            "uuid5: sha1(namespace bytes || name as UTF-8), version and variant digits set; "
            "executed by moesif-backfill's tests"
        )

    def sha1_hex(self, namespace: uuid.UUID, name: str) -> str | None:
        """Lower-case hex SHA-1 of the namespace's 16 bytes followed by the name's UTF-8 bytes;
        None when the dialect builds the whole UUID in one documented function."""
        ns = literal(namespace.bytes.hex())
        if self.name == "duckdb":
            return f"sha1(from_hex({ns}) || encode({name}))"
        if self.name == "bigquery":
            return f"TO_HEX(SHA1(CONCAT(FROM_HEX({ns}), CAST({name} AS BYTES))))"
        return None

    def uuid5(self, namespace: uuid.UUID, name: str, sha1_hex: str | None) -> str:
        """The canonical text of uuid5(namespace, name); NULL when `name` is NULL."""
        if sha1_hex is None:  # Snowflake: UUID_STRING(namespace, name) is UUIDv5
            made = f"LOWER(UUID_STRING({literal(str(namespace))}, {name}))"
            return f"CASE WHEN {name} IS NOT NULL THEN {made} END"
        h = sha1_hex

        def sub(start: int, length: int) -> str:
            return f"SUBSTR({h}, {start}, {length})"

        variant = (
            f"SUBSTR({literal(_VARIANT_DIGITS)}, STRPOS({literal(_HEX_DIGITS)}, {sub(17, 1)}), 1)"
        )
        # bytes 0-3, 4-5, version 5 + 6-7 without the first nibble, variant + 8-9, 10-15
        if self.name == "bigquery":
            args = [sub(1, 8), sub(9, 4), sub(14, 3), variant, sub(18, 3), sub(21, 12)]
            return "FORMAT('%s-%s-5%s-%s%s-%s',\n    " + ",\n    ".join(args) + ")"
        return (
            f"{sub(1, 8)} || '-' || {sub(9, 4)}\n    || '-5' || {sub(14, 3)}"
            f"\n    || '-' || {variant} || {sub(18, 3)}\n    || '-' || {sub(21, 12)}"
        )


def _duckdb_floor_micros(expr: str) -> str:
    """A DuckDB TIMESTAMP_NS / TIMESTAMPTZ_NS as a TIMESTAMP of its epoch microseconds, floored
    (canon() truncates sub-microsecond digits; a cast would round them)."""
    ns = f"epoch_ns({expr})"
    return f"make_timestamp(({ns} - (({ns} % 1000) + 1000) % 1000) // 1000)"


def dialect(name: DialectName) -> Dialect:
    if name not in DIALECTS:
        raise ValueError(f"unknown SQL dialect {name!r}: use one of {', '.join(DIALECTS)}")
    return Dialect(name)
