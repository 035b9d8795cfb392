"""Hostile input (issue 5): every file of the generated corpus (tests/hostile/make_corpus.py)
ends in a clear error naming the file (and the row and column where that makes sense), or in
row-level rejects with the right reasons and rows, while every other row becomes exactly the
right action. Never a bare traceback, never a silently wrong action.

The pipeline runs in process (validate and dry-run modes: no server needed); one test runs the
CLI. docs/hostile-input.md has the same cases as a table.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from moesif_backfill.errors import BackfillError, ConfigError, MappingError, SourceError
from pipeline.report import RunSummary
from pipeline.settings import RunSettings
from tests.hostile.make_corpus import (
    BIG_BAD_ROW,
    D_MAX,
    MAX_ACTION_BYTES,
    T0_TEXT,
    deep_value,
    tid,
    write_corpus,
)
from tests.runner import run_plain

TIME_TEXT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
UUID_TEXT = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
R_TIME_BAD = "unparseable time"
R_TIME_MISSING = "missing time"
R_KEY_RANGE = "transaction_id key timestamp outside years 0001-9999 in UTC"
R_TOO_LARGE = "action over 1,000,000 bytes"

# case -> (mapping, expected error class or None, what the message must say). In validate mode:
# what the preflight (schema, time column) finds is a ConfigError (exit 2), what only the full
# read finds is a SourceError (exit 1).
EXPECTED: dict[str, tuple[str, type[BackfillError] | None, str]] = {
    "parquet_truncated": ("basic", ConfigError, "not a readable Parquet file"),
    "parquet_zero_bytes": ("basic", ConfigError, "Parquet file size is 0 bytes"),
    "parquet_not_parquet": ("basic", ConfigError, "not a readable Parquet file"),
    "parquet_gzipped": ("basic", ConfigError, "gzip-compressed Parquet file is not supported"),
    "parquet_corrupt_page": ("basic", SourceError, "cannot read the Parquet data after row"),
    "parquet_invalid_utf8": (
        "basic",
        SourceError,
        "column 'note' has bytes that are not valid UTF-8 at data row 3",
    ),
    "parquet_duplicate_columns": (
        "basic",
        MappingError,
        "column 'customer' is ambiguous: the file has 2 columns with that name",
    ),
    "csv_ragged_short": ("basic", ConfigError, "at data row 3 (Expected 5 columns, got 4)"),
    "csv_ragged_long": ("basic", ConfigError, "at data row 2 (Expected 5 columns, got 6)"),
    "csv_unbalanced_quote": ("basic", ConfigError, "at data row 2 (Expected 5 columns, got 2)"),
    "csv_invalid_utf8": (
        "basic",
        ConfigError,
        "column 'note' has bytes that are not valid UTF-8 at data row 2",
    ),
    "csv_invalid_utf8_header": ("basic", ConfigError, "CSV header (line 1)"),
    "csv_invalid_utf8_late_key": (
        "basic",
        SourceError,
        f"column 'line_id' has bytes that are not valid UTF-8 (at data row {BIG_BAD_ROW})",
    ),
    "csv_bom_crlf": ("basic", None, ""),
    "csv_mixed_eol": ("basic", None, ""),
    "csv_header_only": ("basic", None, ""),
    "csv_header_only_no_newline": ("basic", None, ""),
    "csv_empty": ("basic", ConfigError, "the CSV file is empty"),
    "csv_duplicate_columns": ("basic", ConfigError, "repeats column name(s) ['customer']"),
    "csv_quoted_newlines": ("basic", None, ""),
    "csv_thousands_separators": ("basic", None, ""),
    "csv_offset_minute_60": ("basic", None, ""),
    "csv_offsets_invalid": ("basic", None, ""),
    "csv_years": ("basic", None, ""),
    "csv_dst_naive": ("time_everywhere_ny", None, ""),
    "csv_dst_mixed": ("time_everywhere_ny", None, ""),
    "parquet_dst": ("time_everywhere_ny", None, ""),
    "parquet_years": ("time_everywhere_tokyo", None, ""),
    "parquet_year_10000": ("time_only_utc", None, ""),
    "parquet_sentinel": ("sentinel_ny", None, ""),
    "parquet_big_values": ("big", None, ""),
    "csv_big_values": ("big", None, ""),
    "parquet_deep_struct": ("deep", None, ""),
    "parquet_too_deep": ("deep", ConfigError, "Parquet schema too deeply nested"),
    "parquet_decimal_extremes": ("decimal", None, ""),
    "csv_decimal_extremes": ("basic", None, ""),
    "csv_number_spellings": ("basic", None, ""),
    "ndjson_invalid_utf8": ("basic", SourceError, "line 2 is not valid UTF-8"),
    "ndjson_bom_crlf": ("basic", None, ""),
    "ndjson_deeply_nested": ("basic", ConfigError, "line 2 nests JSON arrays/objects too deeply"),
}


@dataclass
class Corpus:
    root: Path
    files: dict[str, Path]

    def mapping(self, name: str) -> Path:
        return self.root / "mappings" / f"{name}.yaml"


@dataclass
class Outcome:
    summary: RunSummary
    error: BaseException | None
    records: list[str] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)

    @property
    def actions(self) -> list[dict[str, Any]]:
        return [json.loads(r, parse_float=Decimal) for r in self.records]

    @property
    def reject_rows(self) -> list[tuple[int, str]]:
        return [(r["row"], r["reason"]) for r in self.rejects]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    root = tmp_path_factory.mktemp("hostile")
    files = write_corpus(root)
    assert set(files) == set(EXPECTED), "every corpus file has an expected outcome"
    return Corpus(root, files)


def run_case(
    corpus: Corpus, tmp_path: Path, case: str, mapping: str | None = None, mode: str = "dry-run"
) -> Outcome:
    """Run one corpus file through the pipeline (what the flow does, without Prefect)."""
    mapping = mapping or EXPECTED[case][0]
    out = tmp_path / f"{case}-{mapping}-{mode}"
    settings = RunSettings.model_validate(
        {
            "sources": [str(corpus.files[case])],
            "mapping": corpus.mapping(mapping),
            "mode": mode,
            "out": out / "out" if mode == "dry-run" else None,
            "checkpoint": out / "ckpt",
            "job": "hostile",
            "rejects": out / "rejects.ndjson",
            "allow_older_than_30_days": True,
            "chunk_rows": 1_000,
        }
    )
    summary, error = run_plain(settings)
    records = [
        line
        for f in sorted((out / "out").glob("*.ndjson.gz"))
        for line in gzip.decompress(f.read_bytes()).decode("utf-8").splitlines()
    ]
    rejects_file = out / "rejects.ndjson"
    rejects = (
        [json.loads(x) for x in rejects_file.read_text("utf-8").splitlines()]
        if rejects_file.exists()
        else []
    )
    outcome = Outcome(summary, error, records, rejects)
    _check_invariants(corpus, case, outcome)
    return outcome


def _check_invariants(corpus: Corpus, case: str, o: Outcome) -> None:
    """What holds for every case: no bare exception, one-line messages naming the file, exact
    accounting, and every action valid JSON within the limit with a UTC time and a UUID."""
    if o.error is not None:
        assert isinstance(o.error, BackfillError), repr(o.error)  # never a bare traceback
        message = str(o.error)
        assert str(corpus.files[case]) in message, message
        assert "\n" not in message, message
    assert o.summary.accounted
    assert o.summary.rows_rejected == len(o.rejects) or o.summary.mode == "validate"
    for record in o.records:
        assert len(record.encode("utf-8")) <= MAX_ACTION_BYTES
        action = json.loads(record)
        assert TIME_TEXT.match(action["request"]["time"]), record[:200]
        assert UUID_TEXT.match(action["transaction_id"]), record[:200]
        assert "NaN" not in record[-300:] and "Infinity" not in record[-300:]
    for reject in o.rejects:
        assert reject["source"] == str(corpus.files[case].resolve())


def by_id(outcome: Outcome) -> dict[str, dict[str, Any]]:
    return {a["transaction_id"]: a for a in outcome.actions}


# --------------------------------------------------------------------------------------------
# every file: an error, rejects or actions, as documented


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_every_file_gives_a_clear_error_or_accounted_rows(
    corpus: Corpus, tmp_path: Path, case: str
) -> None:
    _mapping, error_class, text = EXPECTED[case]
    o = run_case(corpus, tmp_path, case, mode="validate")
    if error_class is None:
        assert o.error is None, o.error
        assert o.summary.status in ("complete", "complete_with_rejects")
    else:
        assert type(o.error) is error_class, repr(o.error)
        assert text in str(o.error)


# --------------------------------------------------------------------------------------------
# CSV structure


def _basic_action(i: int, *, amount: str, note: str) -> str:
    return (
        f'{{"action_name":"Hostile","request":{{"time":"{T0_TEXT}"}},"company_id":"cus_{i}",'
        f'"transaction_id":"{tid(f"c{i}")}","metadata":{{"amount":{amount},"note":"{note}"}}}}'
    )


@pytest.mark.parametrize(
    ("case", "rows"), [("csv_bom_crlf", 2), ("csv_mixed_eol", 4), ("ndjson_bom_crlf", 0)]
)
def test_bom_and_line_endings_leave_no_trace_in_names_or_values(
    corpus: Corpus, tmp_path: Path, case: str, rows: int
) -> None:
    o = run_case(corpus, tmp_path, case)
    assert o.error is None and not o.rejects
    if case.startswith("ndjson"):
        assert [a["transaction_id"] for a in o.actions] == [tid("j1"), tid("j2")]
        assert all(a["metadata"] == {"amount": Decimal("1.5"), "note": "n"} for a in o.actions)
        return
    assert o.records == [
        _basic_action(i, amount=f"{i}.5", note=f"note {i}") for i in range(1, rows + 1)
    ]


@pytest.mark.parametrize("case", ["csv_header_only", "csv_header_only_no_newline"])
def test_header_only_csv_is_zero_rows(corpus: Corpus, tmp_path: Path, case: str) -> None:
    o = run_case(corpus, tmp_path, case)
    assert o.error is None
    assert (o.summary.rows_read, o.summary.actions_sent, o.records) == (0, 0, [])


def test_quoted_newlines_stay_inside_values_and_rows_are_counted_as_records(
    corpus: Corpus, tmp_path: Path
) -> None:
    o = run_case(corpus, tmp_path, "csv_quoted_newlines")
    assert o.error is None
    # the row without a time is data row 3, although it starts on line 6 of the file
    assert o.reject_rows == [(3, R_TIME_MISSING)]
    assert o.rejects[0]["values"]["line_id"] == "q3"
    head = f'{{"action_name":"Hostile","request":{{"time":"{T0_TEXT}"}},"company_id":'
    assert o.records == [
        head + f'"cus\\nA","transaction_id":"{tid("q1")}",'
        '"metadata":{"amount":1.5,"note":"line one\\nline two"}}',
        head + f'"cus_b","transaction_id":"{tid("q2")}",'
        '"metadata":{"amount":2.5,"note":"crlf\\r\\ninside"}}',
        head + f'"cus, \\"quoted\\"","transaction_id":"{tid("q4")}",'
        '"metadata":{"amount":4.5,"note":"plain"}}',
    ]


def test_thousands_separators_are_kept_as_written(corpus: Corpus, tmp_path: Path) -> None:
    """A quoted "1,234.50" is neither split nor read as 1234.5: the key is the text as written,
    and the column holding it is a text column, so its metadata values are JSON strings."""
    o = run_case(corpus, tmp_path, "csv_thousands_separators")
    assert o.error is None and not o.rejects
    first, second = o.actions
    assert first["transaction_id"] == tid("1,234.50")
    assert first["metadata"] == {"amount": "1,234.50", "note": "quoted"}
    assert second["transaction_id"] == tid("2")
    assert second["metadata"] == {"amount": "12.5", "note": "plain"}


# --------------------------------------------------------------------------------------------
# times


def _times(o: Outcome) -> list[str]:
    return [a["request"]["time"] for a in o.actions]


def test_invalid_offsets_are_rejected_never_shifted(corpus: Corpus, tmp_path: Path) -> None:
    o = run_case(corpus, tmp_path, "csv_offset_minute_60")  # "+05:60" is not +06:00
    assert o.reject_rows == [(2, R_TIME_BAD)]
    assert o.rejects[0]["values"]["created_at"] == "2024-06-01T12:00:00+05:60"
    assert _times(o) == ["2024-06-01T06:30:00.000Z", T0_TEXT]

    o = run_case(corpus, tmp_path, "csv_offsets_invalid")  # +25:00 +0a:00 +05:99 +24:00 ...
    assert o.reject_rows == [(row, R_TIME_BAD) for row in range(1, 6)]
    assert _times(o) == ["2024-06-01T15:00:00.000Z"]
    assert [a["transaction_id"] for a in o.actions] == [tid("t6")]


def test_years_0001_and_9999_and_out_of_range(corpus: Corpus, tmp_path: Path) -> None:
    o = run_case(corpus, tmp_path, "csv_years")
    assert _times(o) == ["0001-01-01T00:00:00.000Z", "9999-12-31T23:59:59.999Z"]
    assert o.reject_rows == [(3, R_TIME_BAD), (4, R_TIME_BAD)]  # 10000-01-01, 0000-01-01

    # naive Parquet times in the time, the key and metadata
    o = run_case(corpus, tmp_path, "parquet_years", "time_everywhere_utc")
    assert not o.rejects
    assert by_id(o)[tid("y1", "0001-01-01T00:00:00.000000Z")]["metadata"] == {
        "at": "0001-01-01T00:00:00.000Z"
    }
    assert by_id(o)[tid("y2", "9999-12-31T23:59:59.999999Z")]["request"]["time"] == (
        "9999-12-31T23:59:59.999Z"
    )
    # in New York 9999-12-31T23:59:59 is in year 10000 UTC; year 1 uses local mean time
    o = run_case(corpus, tmp_path, "parquet_years", "time_everywhere_ny")
    assert o.reject_rows == [(2, R_KEY_RANGE)]
    assert by_id(o)[tid("y1", "0001-01-01T04:56:02.000000Z")]["request"]["time"] == (
        "0001-01-01T04:56:02.000Z"
    )
    # in Tokyo 0001-01-01T00:00 is in year 0 UTC
    o = run_case(corpus, tmp_path, "parquet_years", "time_everywhere_tokyo")
    assert o.reject_rows == [(1, R_KEY_RANGE)]
    assert _times(o) == ["9999-12-31T14:59:59.999Z", "2024-06-01T03:00:00.000Z"]
    assert o.summary.metadata_nonfinite_omitted == 0  # the rejected row's value is not counted
    o = run_case(corpus, tmp_path, "parquet_years", "time_only_tokyo")
    assert o.reject_rows == [(1, R_TIME_BAD)]


def test_a_time_python_cannot_hold_is_rejected_and_reported(corpus: Corpus, tmp_path: Path) -> None:
    o = run_case(corpus, tmp_path, "parquet_year_10000")  # timestamp[s] in year 10000
    assert o.reject_rows == [(2, R_TIME_BAD)]
    assert o.rejects[0]["values"] == {"line_id": "z2", "created_at": "10000-01-01 00:00:00.000"}
    assert [a["transaction_id"] for a in o.actions] == [tid("z1")]


def test_sentinel_times_without_a_utc_form_are_omitted_and_counted(
    corpus: Corpus, tmp_path: Path
) -> None:
    o = run_case(corpus, tmp_path, "parquet_sentinel")
    assert o.error is None and not o.rejects
    assert o.records == [
        '{"action_name":"Hostile","request":{"time":"2024-06-01T12:00:00.000Z"},'
        f'"transaction_id":"{tid("s1")}","metadata":{{"period":{{"to":null}}}}}}'
    ]
    assert o.summary.metadata_nonfinite_omitted == 2  # valid_to, and period.to


DST_UTC = [
    "2024-11-03T05:30:00.000Z",  # 01:30 happens twice: the earlier instant (EDT)
    "2024-03-10T07:30:00.000Z",  # 02:30 does not exist: the offset before the gap (EST)
    "2024-11-03T04:59:59.000Z",
    "2024-03-10T07:00:00.000Z",
]
GAP = "nonexistent local time {} in America/New_York (DST gap): set the zone the source really "
GAP += "used, e.g. a fixed offset"


def test_dst_policy_in_parquet_times_keys_and_metadata(corpus: Corpus, tmp_path: Path) -> None:
    """The time is also a key: a time inside the gap rejects the row (it has no instant, and
    no ID is safe for it); the other rows keep their IDs."""
    o = run_case(corpus, tmp_path, "parquet_dst")
    assert o.reject_rows == [
        (2, GAP.format("2024-03-10 02:30")),
        (6, GAP.format("2040-03-11 02:30")),
    ]
    utc = [DST_UTC[0], DST_UTC[2], DST_UTC[3], "2040-11-04T05:30:00.000Z"]
    assert _times(o) == utc
    for i, action, text in zip((1, 3, 4, 5), o.actions, utc, strict=True):
        assert action["transaction_id"] == tid(f"d{i}", text[:-5] + ".000000Z")
        assert action["metadata"] == {"at": text}


@pytest.mark.parametrize("case", ["csv_dst_naive", "csv_dst_mixed"])
def test_dst_policy_in_text_times(corpus: Corpus, tmp_path: Path, case: str) -> None:
    o = run_case(corpus, tmp_path, case)
    expected = DST_UTC + (["2024-11-03T06:30:00.000Z"] if case == "csv_dst_mixed" else [])
    assert _times(o) == expected
    # a text key is the text as written (ID contract v1)
    assert o.actions[0]["transaction_id"] == tid("t1", "2024-11-03 01:30:00")
    assert o.actions[0]["metadata"] == {"at": "2024-11-03 01:30:00"}


# --------------------------------------------------------------------------------------------
# values


@pytest.mark.parametrize("case", ["parquet_big_values", "csv_big_values"])
def test_the_action_size_limit_bites_above_1000000_bytes(
    corpus: Corpus, tmp_path: Path, case: str
) -> None:
    o = run_case(corpus, tmp_path, case)
    assert o.error is None
    assert [len(r.encode("utf-8")) for r in o.records] == [999_999, 1_000_000, 1_000_000]
    assert [a["transaction_id"] for a in o.actions] == [tid("b1"), tid("b2"), tid("b4")]
    assert o.reject_rows == [(3, R_TOO_LARGE), (5, R_TOO_LARGE)]  # 1,000,001 bytes each
    assert o.summary.bytes_sent == 2_999_999


def test_deeply_nested_struct_is_exact_json(corpus: Corpus, tmp_path: Path) -> None:
    o = run_case(corpus, tmp_path, "parquet_deep_struct")
    assert o.error is None and not o.rejects
    first, second = o.actions
    expected: Any = deep_value(50)
    leaf = expected
    while "child" in leaf:
        leaf = leaf["child"]
    leaf.update(at="2024-03-10T07:30:00.000Z", ratio=None)  # DST gap: EST; NaN: no JSON form
    assert first["metadata"]["deep"] == expected
    assert '"text":"é\\"\\n","amount":0.000000000000000001' in o.records[0]
    assert "metadata" not in second  # a null struct: no metadata
    assert o.summary.metadata_nonfinite_omitted == 1


def test_decimal_38_18_extremes_keep_every_digit(corpus: Corpus, tmp_path: Path) -> None:
    o = run_case(corpus, tmp_path, "parquet_decimal_extremes")
    assert o.error is None and not o.rejects
    canon = [
        str(D_MAX),
        "-" + str(D_MAX),
        "0.000000000000000001",
        "-0.000000000000000001",
        "0",
        "12.34",
    ]
    assert [a["transaction_id"] for a in o.actions] == [
        tid(f"m{i}", text) for i, text in enumerate(canon, 1)
    ]
    written = [
        str(D_MAX),
        "-" + str(D_MAX),
        "0.000000000000000001",
        "-0.000000000000000001",
        "0.000000000000000000",
        "12.340000000000000000",
    ]
    for record, text in zip(o.records, written, strict=True):
        assert record.endswith(f'"metadata":{{"amount":{text}}}}}')
    assert o.actions[0]["metadata"]["amount"] == D_MAX


def test_csv_numbers_keep_the_digits_written(corpus: Corpus, tmp_path: Path) -> None:
    """A CSV metadata column written as JSON numbers only is sent with its digits, not through
    a double (0.123456789012345678 would become 0.12345678901234568)."""
    o = run_case(corpus, tmp_path, "csv_decimal_extremes")
    assert o.error is None and not o.rejects
    sent = [
        str(D_MAX),
        "-" + str(D_MAX),
        "0.000000000000000001",
        "1E-18",
        "-0",
        "1.50",
        "0.123456789012345678",
        "12345678901234567890123",
        "7",  # blanks around a number are dropped
    ]
    for record, text in zip(o.records, sent, strict=True):
        assert record.endswith(f'"metadata":{{"amount":{text},"note":"n"}}}}')
    # as a key, the text is used exactly as written
    o = run_case(corpus, tmp_path, "csv_decimal_extremes", "decimal")
    assert o.actions[0]["transaction_id"] == tid("m1", str(D_MAX))
    assert o.actions[8]["transaction_id"] == tid("m9", " 7 ")


def test_csv_number_spellings_make_the_column_text(corpus: Corpus, tmp_path: Path) -> None:
    """Issue 10: a column holding a spelling JSON has no number for ("+1", ".5", "1.",
    "00501", "inf") is sent as the strings written, every value of it (also "12.50"); it used
    to be normalized ("+1" -> 1, ".5" -> 0.5)."""
    o = run_case(corpus, tmp_path, "csv_number_spellings")
    assert o.error is None and not o.rejects
    written = ["12.50", "+1", ".5", "1.", "00501", "1e5", "inf"]
    for record, text in zip(o.records, written, strict=True):
        assert record.endswith(f'"metadata":{{"amount":"{text}","note":"n"}}}}')
    o = run_case(corpus, tmp_path, "csv_number_spellings", "decimal")
    assert o.actions[1]["transaction_id"] == tid("s2", "+1")


# --------------------------------------------------------------------------------------------
# the CLI


@pytest.fixture(scope="module")
def cli_on_ragged_csv(corpus: Corpus, prefect_api: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PREFECT_API_URL=prefect_api, PREFECT_LOGGING_LEVEL="WARNING")
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "moesif_backfill.cli",
            "validate",
            str(corpus.files["csv_ragged_short"]),
            "--mapping",
            str(corpus.mapping("basic")),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_reports_a_hostile_file_in_one_error_line(
    corpus: Corpus, cli_on_ragged_csv: subprocess.CompletedProcess[str]
) -> None:
    done = cli_on_ragged_csv
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr[-2000:]
    [line] = errors
    assert str(corpus.files["csv_ragged_short"]) in line
    assert "at data row 3 (Expected 5 columns, got 4)" in line
    assert "Traceback" not in line


def test_cli_stderr_has_no_traceback(cli_on_ragged_csv: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in cli_on_ragged_csv.stderr


def test_namespace_matches_the_mapping_scope() -> None:
    """The corpus computes expected IDs itself; check it uses the scope the mappings name."""
    assert tid("x") == str(
        uuid.uuid5(uuid.uuid5(uuid.NAMESPACE_URL, "moesif-backfill:hostile"), "v1|1:x")
    )
