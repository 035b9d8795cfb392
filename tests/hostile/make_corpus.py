"""The hostile-input corpus (issue 5): broken, odd and extreme input files, generated on demand.

`write_corpus(root)` writes every file (and the mappings they are read with) under `root` and
returns {case name: path}. Nothing binary is committed: tests/test_hostile_input.py runs this
into a temporary directory. `python -m tests.hostile.make_corpus DIR` writes it for a look.

Every file uses one column layout, `line_id, customer, created_at, amount, note` (Parquet adds
typed columns where a case needs them), and times in 2024 so the expected actions are fixed.
The expected outcome of each case is in the test module and in docs/hostile-input.md.
"""

from __future__ import annotations

import datetime as dt
import decimal
import gzip
import sys
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import yaml

SCOPE = "hostile"
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "moesif-backfill:" + SCOPE)
ACTION = "Hostile"
HEADER = b"line_id,customer,created_at,amount,note"
T0 = "2024-06-01T12:00:00Z"  # the time of rows whose time is not the point
T0_TEXT = "2024-06-01T12:00:00.000Z"

MAX_ACTION_BYTES = 1_000_000
D38 = pa.decimal128(38, 18)
D_MAX = decimal.Decimal("99999999999999999999.999999999999999999")  # the largest Decimal(38, 18)
D_TINY = decimal.Decimal("1E-18")
DEEP_LEVELS = 50  # Parquet readers refuse more than 100 levels of schema nesting
TOO_DEEP_LEVELS = 120
BIG_LINES = 90_000  # > 4 MB of CSV: the bad row comes after the block types are inferred from
BIG_BAD_ROW = 88_000


def tid(*texts: str | None) -> str:
    """transaction_id from the canon() texts of the key values, per ID contract v1 (stdlib only)."""
    name = "v1" + "".join("|~" if t is None else f"|{len(t.encode())}:{t}" for t in texts)
    return str(uuid.uuid5(NAMESPACE, name))


def _mapping(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "action_name": {"value": ACTION},
        "company_id": "customer",
        "time": {"column": "created_at", "timezone": "UTC"},
        "metadata": {"amount": "amount", "note": "note"},
        "transaction_id": {"scope": SCOPE, "key": ["line_id"]},
    }
    base.update(over)
    return base


def _only(**over: Any) -> dict[str, Any]:
    """A mapping with just the required fields plus `over`."""
    base: dict[str, Any] = {
        "action_name": {"value": ACTION},
        "time": {"column": "created_at", "timezone": "UTC"},
        "transaction_id": {"scope": SCOPE, "key": ["line_id"]},
    }
    base.update(over)
    return base


NEW_YORK = {"column": "created_at", "timezone": "America/New_York"}
TOKYO = {"column": "created_at", "timezone": "Asia/Tokyo"}
TIME_KEY = {"scope": SCOPE, "key": ["line_id", "created_at"]}

MAPPINGS: dict[str, dict[str, Any]] = {
    "basic": _mapping(),
    # a naive time column that is also part of the key and a metadata value
    "time_everywhere_utc": _only(transaction_id=TIME_KEY, metadata={"at": "created_at"}),
    "time_everywhere_ny": _only(
        time=NEW_YORK, transaction_id=TIME_KEY, metadata={"at": "created_at"}
    ),
    "time_everywhere_tokyo": _only(
        time=TOKYO, transaction_id=TIME_KEY, metadata={"at": "created_at"}
    ),
    "time_only_utc": _only(),
    "time_only_tokyo": _only(time=TOKYO),
    "sentinel_ny": _only(time=NEW_YORK, metadata={"valid_to": "valid_to", "period": "period"}),
    "big": _only(metadata={"note": "note"}),
    "deep": _only(time=NEW_YORK, metadata={"deep": "deep"}),
    "decimal": _only(
        transaction_id={"scope": SCOPE, "key": ["line_id", "amount"]},
        metadata={"amount": "amount"},
    ),
}


# --------------------------------------------------------------------------------------------
# writers


def _csv(path: Path, rows: list[bytes], *, header: bytes = HEADER, eol: bytes = b"\n") -> Path:
    path.write_bytes(header + eol + b"".join(r + eol for r in rows))
    return path


def _parquet(path: Path, columns: dict[str, pa.Array], **kw: Any) -> Path:
    pq.write_table(pa.table(columns), path, **kw)
    return path


def _naive(*texts: str) -> pa.Array:
    return pa.array([dt.datetime.fromisoformat(t) for t in texts], pa.timestamp("us"))


def _utc(n: int) -> pa.Array:
    return pa.array([dt.datetime(2024, 6, 1, 12, tzinfo=dt.UTC)] * n, pa.timestamp("us", "UTC"))


def _strings_with_bad_utf8(values: list[bytes]) -> pa.Array:
    """A string array holding exactly these bytes (pyarrow would refuse to build invalid UTF-8)."""
    offsets = [0]
    for v in values:
        offsets.append(offsets[-1] + len(v))
    return pa.StringArray.from_buffers(
        len(values),
        pa.py_buffer(pa.array(offsets, pa.int32()).buffers()[1]),
        pa.py_buffer(b"".join(values)),
    )


def big_note_length(total: int) -> int:
    """How many one-byte characters `note` needs for the "big" mapping's action to be `total`
    bytes: the action is fixed text, a 36-character UUID and the note."""
    fixed = (
        f'{{"action_name":"{ACTION}","request":{{"time":"{T0_TEXT}"}},"transaction_id":"'
        + "-" * 36
        + '","metadata":{"note":""}}'
    )
    return total - len(fixed.encode())


def big_notes() -> list[str]:
    """Notes that make actions of 999,999 / 1,000,000 / 1,000,001 bytes, then 1,000,000 bytes of
    two-byte characters, then 1,000,001 bytes made of escaped characters (each `"` is 2 bytes)."""
    at = big_note_length
    two_byte = "é" * (at(MAX_ACTION_BYTES) // 2) + "x" * (at(MAX_ACTION_BYTES) % 2)
    escaped = '"' * (at(MAX_ACTION_BYTES + 1) // 2) + "x" * (at(MAX_ACTION_BYTES + 1) % 2)
    return ["a" * at(999_999), "b" * at(1_000_000), "c" * at(1_000_001), two_byte, escaped]


def deep_value(levels: int) -> dict[str, Any]:
    """`levels` nested structs around a leaf: a DST-gap time, NaN, escapes, a tiny decimal."""
    value: dict[str, Any] = {
        "at": dt.datetime(2024, 3, 10, 2, 30),  # inside New York's DST gap
        "ratio": float("nan"),
        "text": 'é"\n',
        "amount": D_TINY,
        "tags": [1, None, 3],
    }
    for level in range(levels):
        value = {"level": level, "child": value}
    return value


def deep_type(levels: int) -> pa.DataType:
    typ: pa.DataType = pa.struct(
        [
            ("at", pa.timestamp("us")),
            ("ratio", pa.float64()),
            ("text", pa.string()),
            ("amount", D38),
            ("tags", pa.list_(pa.int64())),
        ]
    )
    for _ in range(levels):
        typ = pa.struct([("level", pa.int64()), ("child", typ)])
    return typ


def _basic_table(n: int) -> dict[str, pa.Array]:
    return {
        "line_id": pa.array([f"p{i}" for i in range(1, n + 1)]),
        "customer": pa.array([f"cus_{i}" for i in range(1, n + 1)]),
        "created_at": _utc(n),
        "amount": pa.array([float(i) for i in range(1, n + 1)]),
        "note": pa.array([f"note {i}" for i in range(1, n + 1)]),
    }


# --------------------------------------------------------------------------------------------
# the corpus


def write_corpus(root: Path) -> dict[str, Path]:
    """Write every case and the mappings (root/mappings/<name>.yaml); {case: path}."""
    root.mkdir(parents=True, exist_ok=True)
    maps = root / "mappings"
    maps.mkdir(exist_ok=True)
    for name, mapping in MAPPINGS.items():
        (maps / f"{name}.yaml").write_text(yaml.safe_dump(mapping, sort_keys=False), "utf-8")
    files: dict[str, Path] = {}

    def add(name: str, path: Path) -> None:
        files[name] = path

    _write_parquet_cases(root, add)
    _write_csv_cases(root, add)
    _write_time_cases(root, add)
    _write_value_cases(root, add)
    _write_ndjson_cases(root, add)
    return files


def _write_parquet_cases(root: Path, add: Any) -> None:
    good = _parquet(root / "good.parquet", _basic_table(3000), row_group_size=1000)
    data = good.read_bytes()
    add("parquet_truncated", root / "truncated.parquet")
    (root / "truncated.parquet").write_bytes(data[: len(data) // 2])
    add("parquet_zero_bytes", root / "zero_bytes.parquet")
    (root / "zero_bytes.parquet").write_bytes(b"")
    add("parquet_not_parquet", root / "not_parquet.parquet")
    (root / "not_parquet.parquet").write_bytes(HEADER + b"\np1,cus_1," + T0.encode() + b",1,x\n")
    add("parquet_gzipped", root / "gzipped.parquet")
    (root / "gzipped.parquet").write_bytes(gzip.compress(data))
    # footer intact, the page header of the third row group's line_id column corrupted
    column = pq.ParquetFile(good).metadata.row_group(2).column(0)
    offset = column.dictionary_page_offset or column.data_page_offset
    corrupt = bytearray(data)
    for i in range(offset, offset + 16):
        corrupt[i] ^= 0x5A
    add("parquet_corrupt_page", root / "corrupt_page.parquet")
    (root / "corrupt_page.parquet").write_bytes(bytes(corrupt))
    good.unlink()

    table = _basic_table(3)
    table["note"] = _strings_with_bad_utf8([b"ok", b"fine", b"caf\xe9 latin-1"])
    add("parquet_invalid_utf8", _parquet(root / "invalid_utf8.parquet", table))

    t = _basic_table(2)
    dup = pa.Table.from_arrays([*t.values(), pa.array(["x", "y"])], names=[*t.keys(), "customer"])
    pq.write_table(dup, root / "duplicate_columns.parquet")
    add("parquet_duplicate_columns", root / "duplicate_columns.parquet")


def _write_csv_cases(root: Path, add: Any) -> None:
    t0 = T0.encode()

    def row(i: int) -> bytes:
        return b"c%d,cus_%d,%s,%d.5,note %d" % (i, i, t0, i, i)

    add(
        "csv_ragged_short",
        _csv(root / "ragged_short.csv", [row(1), row(2), b"c3,cus_3," + t0 + b",3.5"]),
    )
    # an unquoted thousands separator splits the amount into two fields
    add(
        "csv_ragged_long",
        _csv(root / "ragged_long.csv", [row(1), b"c2,cus_2," + t0 + b",1,234.50,note 2", row(3)]),
    )
    add(
        "csv_unbalanced_quote",
        _csv(root / "unbalanced_quote.csv", [row(1), b'c2,"cus_2,' + t0 + b",2.5,n", row(3)]),
    )
    add(
        "csv_invalid_utf8",
        _csv(root / "invalid_utf8.csv", [row(1), b"c2,cus_2," + t0 + b",2.5,caf\xe9", row(3)]),
    )
    add(
        "csv_invalid_utf8_header",
        _csv(
            root / "invalid_utf8_header.csv",
            [row(1)],
            header=b"line_id,customer,created_at,amount,n\xf6te",
        ),
    )
    late = [row(i) for i in range(1, BIG_LINES + 1)]
    late[BIG_BAD_ROW - 1] = b"c\xe9%d,cus_1,%s,1.5,late" % (BIG_BAD_ROW, t0)
    add("csv_invalid_utf8_late_key", _csv(root / "invalid_utf8_late_key.csv", late))
    add(
        "csv_bom_crlf",
        _csv(root / "bom_crlf.csv", [row(1), row(2)], header=b"\xef\xbb\xbf" + HEADER, eol=b"\r\n"),
    )
    (root / "mixed_eol.csv").write_bytes(
        HEADER + b"\r\n" + row(1) + b"\n" + row(2) + b"\r" + row(3) + b"\r\n" + row(4)
    )
    add("csv_mixed_eol", root / "mixed_eol.csv")
    add("csv_header_only", _csv(root / "header_only.csv", []))
    (root / "header_only_no_newline.csv").write_bytes(HEADER)
    add("csv_header_only_no_newline", root / "header_only_no_newline.csv")
    (root / "empty.csv").write_bytes(b"")
    add("csv_empty", root / "empty.csv")
    add(
        "csv_duplicate_columns",
        _csv(root / "duplicate_columns.csv", [row(1) + b",x"], header=HEADER + b",customer"),
    )
    add(
        "csv_quoted_newlines",
        _csv(
            root / "quoted_newlines.csv",
            [
                b'q1,"cus\nA",' + t0 + b',1.5,"line one\nline two"',
                b"q2,cus_b," + t0 + b',2.5,"crlf\r\ninside"',
                b"q3,cus_c,,3.5,no time",  # empty unquoted time: null -> rejected (row 3)
                b'q4,"cus, ""quoted""",' + t0 + b",4.5,plain",
            ],
        ),
    )
    add(
        "csv_thousands_separators",
        _csv(
            root / "thousands_separators.csv",
            [b'"1,234.50",cus_1,' + t0 + b',"1,234.50",quoted', b"2,cus_2," + t0 + b",12.5,plain"],
        ),
    )


def _write_time_cases(root: Path, add: Any) -> None:
    def times_csv(name: str, times: list[str]) -> None:
        rows = [b"%s,cus,%s,1.5,n" % (f"t{i}".encode(), t.encode()) for i, t in enumerate(times, 1)]
        add(f"csv_{name}", _csv(root / f"{name}.csv", rows))

    # all four look like ISO offsets: the old fast path handed them to Arrow, which read
    # "+05:60" as +06:00
    times_csv("offset_minute_60", ["2024-06-01T12:00:00+05:30", "2024-06-01T12:00:00+05:60", T0])
    times_csv(
        "offsets_invalid",
        [
            "2024-06-01T12:00:00+25:00",
            "2024-06-01T12:00:00+0a:00",
            "2024-06-01T12:00:00+05:99",
            "2024-06-01T12:00:00+24:00",
            "2024-06-01T12:00:00+05:30:60",
            "2024-06-01T12:00:00-03:00",
        ],
    )
    times_csv(
        "years",
        [
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999Z",
            "10000-01-01T00:00:00Z",
            "0000-01-01T00:00:00Z",
        ],
    )
    # naive wall-clock times at New York's 2024 DST changes (fast path: all naive)
    dst = [
        "2024-11-03 01:30:00",  # ambiguous
        "2024-03-10 02:30:00",  # in the gap
        "2024-11-03 00:59:59",
        "2024-03-10 03:00:00",
    ]
    times_csv("dst_naive", dst)
    times_csv("dst_mixed", [*dst, "2024-11-03T01:30:00-05:00"])  # one offset: per-value path

    add(
        "parquet_dst",
        _parquet(
            root / "dst.parquet",
            {
                "line_id": pa.array([f"d{i}" for i in range(1, 7)]),
                "created_at": _naive(
                    "2024-11-03T01:30:00",
                    "2024-03-10T02:30:00",
                    "2024-11-03T00:59:59",
                    "2024-03-10T03:00:00",
                    "2040-11-04T01:30:00",  # after 2037: zoneinfo's rule, same policy
                    "2040-03-11T02:30:00",
                ),
            },
        ),
    )
    add(
        "parquet_years",
        _parquet(
            root / "years.parquet",
            {
                "line_id": pa.array(["y1", "y2", "y3"]),
                "created_at": _naive(
                    "0001-01-01T00:00:00", "9999-12-31T23:59:59.999999", "2024-06-01T12:00:00"
                ),
            },
        ),
    )
    seconds = int((dt.datetime(10000 - 1, 12, 31) - dt.datetime(1970, 1, 1)).total_seconds())
    add(
        "parquet_year_10000",
        _parquet(
            root / "year_10000.parquet",
            {
                "line_id": pa.array(["z1", "z2"]),
                "created_at": pa.array([1_717_243_200, seconds + 86_400], pa.int64()).cast(
                    pa.timestamp("s")
                ),
            },
        ),
    )
    period = pa.struct([("to", pa.timestamp("us"))])
    add(
        "parquet_sentinel",
        _parquet(
            root / "sentinel.parquet",
            {
                "line_id": pa.array(["s1"]),
                "created_at": _naive("2024-06-01T08:00:00"),
                "valid_to": _naive("9999-12-31T23:59:59"),  # year 10000 in UTC from New York
                "period": pa.array([{"to": dt.datetime(9999, 12, 31, 23, 59, 59)}], period),
            },
        ),
    )


def _write_value_cases(root: Path, add: Any) -> None:
    notes = big_notes()
    n = len(notes)
    big = {
        "line_id": pa.array([f"b{i}" for i in range(1, n + 1)]),
        "created_at": _utc(n),
        "note": pa.array(notes),
    }
    add("parquet_big_values", _parquet(root / "big_values.parquet", big))
    pacsv.write_csv(pa.table({**big, "created_at": pa.array([T0] * n)}), root / "big_values.csv")
    add("csv_big_values", root / "big_values.csv")

    deep = [deep_value(DEEP_LEVELS), None]
    add(
        "parquet_deep_struct",
        _parquet(
            root / "deep_struct.parquet",
            {
                "line_id": pa.array(["n1", "n2"]),
                "created_at": _naive("2024-06-01T08:00:00", "2024-06-01T08:00:00"),
                "deep": pa.array(deep, deep_type(DEEP_LEVELS)),
            },
        ),
    )
    add(
        "parquet_too_deep",
        _parquet(
            root / "too_deep.parquet",
            {
                "line_id": pa.array(["n1"]),
                "created_at": _naive("2024-06-01T08:00:00"),
                "deep": pa.array([None], deep_type(TOO_DEEP_LEVELS)),
            },
        ),
    )

    values = [
        D_MAX,
        D_MAX.copy_negate(),
        D_TINY,
        D_TINY.copy_negate(),
        decimal.Decimal(0),
        decimal.Decimal("12.34"),
    ]
    add(
        "parquet_decimal_extremes",
        _parquet(
            root / "decimal_extremes.parquet",
            {
                "line_id": pa.array([f"m{i}" for i in range(1, len(values) + 1)]),
                "created_at": _utc(len(values)),
                "amount": pa.array(values, D38),
            },
        ),
    )
    texts = [
        str(D_MAX),
        str(D_MAX.copy_negate()),
        "0.000000000000000001",
        "1E-18",
        "-0",
        "1.50",
        "0.123456789012345678",
        "12345678901234567890123",
        " 7 ",
    ]
    rows = [b"m%d,cus,%s,%s,n" % (i, T0.encode(), t.encode()) for i, t in enumerate(texts, 1)]
    add("csv_decimal_extremes", _csv(root / "decimal_extremes.csv", rows))
    # spellings a CSV reader takes for numbers but JSON does not: the whole column is text
    spellings = ["12.50", "+1", ".5", "1.", "00501", "1e5", "inf"]
    rows = [b"s%d,cus,%s,%s,n" % (i, T0.encode(), t.encode()) for i, t in enumerate(spellings, 1)]
    add("csv_number_spellings", _csv(root / "number_spellings.csv", rows))


def _write_ndjson_cases(root: Path, add: Any) -> None:
    def line(i: int, note: bytes = b"n") -> bytes:
        return b'{"line_id":"j%d","customer":"cus","created_at":"%s","amount":1.5,"note":"%s"}' % (
            i,
            T0.encode(),
            note,
        )

    (root / "invalid_utf8.ndjson").write_bytes(line(1) + b"\n" + line(2, b"caf\xe9") + b"\n")
    add("ndjson_invalid_utf8", root / "invalid_utf8.ndjson")
    (root / "bom_crlf.ndjson").write_bytes(b"\xef\xbb\xbf" + line(1) + b"\r\n" + line(2) + b"\r\n")
    add("ndjson_bom_crlf", root / "bom_crlf.ndjson")
    deep = b'{"line_id":"j2","customer":"cus","created_at":"%s","amount":1.5,"note":%s}' % (
        T0.encode(),
        b"[" * 100_000 + b"]" * 100_000,
    )
    (root / "deeply_nested.ndjson").write_bytes(line(1) + b"\n" + deep + b"\n")
    add("ndjson_deeply_nested", root / "deeply_nested.ndjson")


if __name__ == "__main__":  # pragma: no cover
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "hostile-corpus")
    for case, file in write_corpus(out).items():
        print(f"{case:32} {file}")
