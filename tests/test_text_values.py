"""Issue 10, values from text sources (CSV, NDJSON, manifests, Redshift parts): every value
arrives exactly as written.

1. identity fields (action_name, company_id, user_id, subscription_id, session_token,
   request.*) are text, always: `000123`, `00501`, `1e5`, 20-digit ids as written;
2. metadata keeps its exact digits, typed per column per file over the whole file: JSON
   numbers only when every value of the column is written as one, else the strings written;
   `type: string|number` forces it; NDJSON numbers keep their digits;
3. epoch times written as text honour `unit:` (also when the column is a key);
4. a CSV time column is parsed by our own rules for every row, not by a type guessed from the
   first 4 MB;
7. `validate` warns when no request.uri is mapped.

Data is shaped like real exports: leading zeros, 20-digit ids, `1e5` as an id, mixed offsets.
The pipeline runs in process (dry-run / validate) or against the strict Firehose stand-in.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import shutil
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from connectors.checkpoint_local import LocalCheckpointStore
from moesif_backfill import cli_output
from moesif_backfill.errors import MappingError, PermanentDeliveryError, SourceError
from pipeline.plan import make_plan
from pipeline.report import RunSummary
from pipeline.settings import RunSettings
from tests.runner import run_plain
from transforms.mapping import parse_mapping

SCOPE = "text.values"
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "moesif-backfill:" + SCOPE)
T0 = "2024-06-01T12:00:00Z"


def contract_id(*texts: str) -> str:
    """ID contract v1 from the standard library alone (docs/transaction-id.md)."""
    name = "v1" + "".join(f"|{len(t.encode())}:{t}" for t in texts)
    return str(uuid.uuid5(NAMESPACE, name))


def write_mapping(tmp_path: Path, **fields: Any) -> Path:
    mapping: dict[str, Any] = {
        "action_name": {"value": "Usage"},
        "time": {"column": "ts"},
        "request": {"uri": {"value": "https://billing.example.com/usage"}},
        "transaction_id": {"scope": SCOPE, "key": ["line_id"]},
    }
    mapping.update(fields)
    path = tmp_path / "mapping.yaml"
    path.write_text(yaml.safe_dump(mapping, sort_keys=False), encoding="utf-8")
    return path


def settings(tmp_path: Path, sources: list[Path], mapping: Path, **kw: Any) -> RunSettings:
    base: dict[str, Any] = {
        "sources": [str(s) for s in sources],
        "mapping": mapping,
        "mode": "dry-run",
        "out": tmp_path / "out",
        "checkpoint": str(tmp_path / "ckpt"),
        "job": "text-values",
        "chunk_rows": 1_000,
        "allow_older_than_30_days": True,
    }
    base.update(kw)
    return RunSettings.model_validate(base)


def dry_run(
    tmp_path: Path, sources: list[Path], mapping: Path, **kw: Any
) -> tuple[RunSummary, BaseException | None, list[str]]:
    """Run in dry-run mode; the records exactly as they would be sent."""
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
    summary, err = run_plain(settings(tmp_path, sources, mapping, **kw))
    records = [
        line.decode()
        for f in sorted((tmp_path / "out").glob("*.ndjson.gz"))
        for line in gzip.decompress(f.read_bytes()).splitlines()
    ]
    return summary, err, records


def actions(records: list[str]) -> list[dict[str, Any]]:
    return [json.loads(r, parse_float=Decimal, parse_int=Decimal) for r in records]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode())
    return path


IDENTITY = {
    "action_name": "event",
    "company_id": "customer_id",
    "user_id": "user_id",
    "subscription_id": "subscription_id",
    "session_token": "token",
    "request": {"uri": "page", "ip_address": "ip", "user_agent_string": "agent"},
}
IDENTITY_ROWS = [
    # event, customer_id, user_id, subscription_id, token, page, ip, agent
    ("1e5", "000123", "00501", "12345678901234567890", "1e5", "0012", "00501", "007"),
    ("42", "123", "501", "99999999999999999999", "000", "1.50", "1", "+1"),
    ("00", "0.10", "-0", "1E3", "0x1F", " 7 ", "12.50", "1."),
]


# --------------------------------------------------------------------------------------------
# 1. identity fields are text, always


def test_csv_identity_fields_are_sent_exactly_as_written(tmp_path: Path) -> None:
    header = "line_id,event,customer_id,user_id,subscription_id,token,page,ip,agent,ts\n"
    body = "".join(
        f"l{i},{','.join(row)},{T0}\n" for i, row in enumerate(IDENTITY_ROWS, 1)
    ).replace(" 7 ", '" 7 "')
    src = write(tmp_path / "identity.csv", header + body)
    _, err, records = dry_run(tmp_path, [src], write_mapping(tmp_path, **IDENTITY))
    assert err is None, err
    got = [
        (
            a["action_name"],
            a["company_id"],
            a["user_id"],
            a["subscription_id"],
            a["session_token"],
            a["request"]["uri"],
            a["request"]["ip_address"],
            a["request"]["user_agent_string"],
        )
        for a in actions(records)
    ]
    assert got == IDENTITY_ROWS
    assert [a["transaction_id"] for a in actions(records)] == [
        contract_id(f"l{i}") for i in (1, 2, 3)
    ]


def test_ndjson_identity_numbers_are_sent_as_written(tmp_path: Path) -> None:
    """JSON numbers in identity fields: the text they were written as (pyarrow read them as
    int64/double: 12345678901234567890 -> "1.2345678901234567e+19", 1e5 -> "100000")."""
    rows = [
        ("123", "12345678901234567890", "1e5", "2.50"),
        ("7", "99999999999999999999", "-0", "1E3"),
    ]
    body = "".join(
        f'{{"line_id":"n{i}","customer_id":{c},"subscription_id":{sub},"token":{tok},'
        f'"ip":{ip},"ts":"{T0}"}}\n'
        for i, (c, sub, tok, ip) in enumerate(rows, 1)
    )
    src = write(tmp_path / "identity.ndjson", body)
    mapping = write_mapping(
        tmp_path,
        company_id="customer_id",
        subscription_id="subscription_id",
        session_token="token",
        request={"uri": {"value": "https://x.example"}, "ip_address": "ip"},
    )
    _, err, records = dry_run(tmp_path, [src], mapping)
    assert err is None, err
    got = [
        (a["company_id"], a["subscription_id"], a["session_token"], a["request"]["ip_address"])
        for a in actions(records)
    ]
    assert got == rows


# --------------------------------------------------------------------------------------------
# 2. metadata from text keeps its exact digits, typed per column


def test_csv_metadata_typed_per_column_over_the_whole_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A column is JSON numbers only if every value in the file is written as one; the
    decision covers rows far beyond the first block the CSV reader infers types from."""
    from connectors import csv_dialect

    monkeypatch.setattr(csv_dialect, "CSV_BLOCK_BYTES", 1 << 12)
    monkeypatch.setattr(csv_dialect, "CSV_STREAM_BLOCK_BYTES", 1 << 12)
    amounts = ["12345678901234567890", "0.123456789012345678", "12.50", "-0", "1E-18", ""]
    rows = [
        f"l{i},{T0},{amounts[i % len(amounts)]},10001,{i},10001,10001\n" for i in range(1, 3001)
    ]
    rows[-1] = f"l3000,{T0},7,00501,3000,abc,00501\n"  # text only in the very last row
    src = write(tmp_path / "m.csv", "line_id,ts,amount,zip,qty,zipnum,zipstr\n" + "".join(rows))
    mapping = write_mapping(
        tmp_path,
        metadata={
            "amount": "amount",
            "zip": "zip",
            "qty": "qty",
            "zipnum": {"column": "zipnum", "type": "number"},
            "zipstr": {"column": "zipstr", "type": "string"},
        },
    )
    summary, err, records = dry_run(tmp_path, [src], mapping)
    assert err is None, err
    assert summary.rows_rejected == 1  # zipnum "abc" with type: number
    assert records[0].endswith(
        '"metadata":{"amount":0.123456789012345678,"zip":"10001","qty":1,'
        '"zipnum":10001,"zipstr":"10001"}}'
    )
    assert records[1].endswith(
        '"metadata":{"amount":12.50,"zip":"10001","qty":2,"zipnum":10001,"zipstr":"10001"}}'
    )
    assert '"amount":12345678901234567890,' in records[5]
    assert '"amount":-0,' in records[2] and '"amount":1E-18,' in records[3]
    assert '"metadata":{"zip":"10001","qty":5,' in records[4]  # null amount: omitted
    assert all('"zip":"10001"' in r for r in records)  # one 00501 makes the column text
    assert len(records) == 2999


def test_csv_number_typing_survives_a_resume_mid_file(
    tmp_path: Path, strict_firehose: Any, firehose_stream: str
) -> None:
    """The typing is decided before the file's first row is sent, from the whole file: a rerun
    that resumes after the first chunk types the rest like the beginning."""
    rows = [f"l{i},{T0},{i}.50,10001\n" for i in range(1, 3001)]
    rows[-1] = f"l3000,{T0},3000.50,00501\n"
    src = write(tmp_path / "r.csv", "line_id,ts,amount,zip\n" + "".join(rows))
    mapping = write_mapping(tmp_path, metadata={"amount": "amount", "zip": "zip"})
    strict_firehose.configure(delete_stream_after_calls=2)  # chunk 0 (2 calls) gets through
    s = settings(
        tmp_path,
        [src],
        mapping,
        mode="send",
        out=None,
        stream=firehose_stream,
        endpoint_url=strict_firehose.endpoint_url,
        region="us-east-1",
        chunks_in_flight=1,
        max_in_flight=1,
    )
    summary, err = run_plain(s)
    assert isinstance(err, PermanentDeliveryError) and summary.actions_sent == 1_000
    records = [r.decode() for r in strict_firehose.records(firehose_stream)]
    plan = make_plan(s, LocalCheckpointStore(tmp_path / "ckpt"))
    assert plan.files[0].number_columns == ["amount"]
    strict_firehose.reset_faults()
    strict_firehose.create_stream(firehose_stream)
    summary, err = run_plain(s)
    assert err is None and summary.rows_skipped == 1_000 and summary.actions_sent == 2_000
    records += [r.decode() for r in strict_firehose.records(firehose_stream)]
    assert len(records) == 3_000
    by_line = {json.loads(r)["transaction_id"]: r for r in records}
    for i in (1, 1000, 1001, 3000):
        zip_text = "00501" if i == 3000 else "10001"
        assert by_line[contract_id(f"l{i}")].endswith(
            f'"metadata":{{"amount":{i}.50,"zip":"{zip_text}"}}}}'
        )


def test_csv_files_are_typed_each_by_their_own_values(tmp_path: Path) -> None:
    a = write(tmp_path / "in" / "a.csv", f"line_id,ts,zip\na1,{T0},00501\na2,{T0},10001\n")
    b = write(tmp_path / "in" / "b.csv", f"line_id,ts,zip\nb1,{T0},10001\nb2,{T0},20002\n")
    forced = {"zip": {"column": "zip", "type": "string"}}
    _, err, records = dry_run(tmp_path, [a, b], write_mapping(tmp_path, metadata={"zip": "zip"}))
    assert err is None, err
    assert [a["metadata"]["zip"] for a in actions(records)] == ["00501", "10001", 10001, 20002]
    _, err, records = dry_run(tmp_path, [a, b], write_mapping(tmp_path, metadata=forced))
    assert err is None, err
    assert [a["metadata"]["zip"] for a in actions(records)] == ["00501", "10001", "10001", "20002"]


def test_ndjson_metadata_numbers_keep_their_digits(tmp_path: Path) -> None:
    body = "".join(
        f'{{"line_id":"n{i}","ts":"{T0}","amount":{amount},"qty":{qty},"note":"x"}}\n'
        for i, (amount, qty) in enumerate(
            [
                ("0.123456789012345678", "12345678901234567890"),
                ("12.50", "7"),
                ("1e5", "-0"),
                ("null", "1E+2"),
            ],
            1,
        )
    )
    src = write(tmp_path / "n.ndjson", body)
    mapping = write_mapping(tmp_path, metadata={"amount": "amount", "qty": "qty", "note": "note"})
    _, err, records = dry_run(tmp_path, [src], mapping)
    assert err is None, err
    metadata = [r[r.index('"metadata":') :] for r in records]
    assert metadata == [
        '"metadata":{"amount":0.123456789012345678,"qty":12345678901234567890,"note":"x"}}',
        '"metadata":{"amount":12.50,"qty":7,"note":"x"}}',
        '"metadata":{"amount":1e5,"qty":-0,"note":"x"}}',
        '"metadata":{"qty":1E+2,"note":"x"}}',
    ]


TRICKY_NUMBER_LINES = [
    # (line, the amount as written, whether the column-wise path may take it)
    ('{"amount":12.50,"note":"x"}', "12.50", True),
    ('{"amount" : -0 }', "-0", True),
    ('{"amount":null}', None, True),
    ('{"other":1}', None, True),
    ('{"meta":{"amount":5.0},"amount":5}', "5", False),  # the key twice
    ('{"meta":{"amount":5.0}}', None, False),  # only nested
    ('{"note":"\\"amount\\": 9","amount":9.0}', "9.0", True),  # inside a string
    ('{"x\\"amount":3.0,"amount":3}', "3", False),  # a key ending in "amount
    ('{"\\u0061mount":7.10}', "7.10", False),  # the key written with an escape
    ('{"amount":1e-45}', "1e-45", False),  # more digits than a decimal holds
    ('{"amount":123456789012345678901234567890123456789012}', "1234567890" * 4 + "12", False),
]


@pytest.mark.parametrize(("line", "written", "columnwise"), TRICKY_NUMBER_LINES)
def test_ndjson_number_text_is_the_top_level_value_as_written(
    tmp_path: Path, line: str, written: str | None, columnwise: bool
) -> None:
    """The text of a number field comes column-wise from the raw line when the key occurs once
    and the text has the exact value pyarrow read; anything else takes the per-line path.
    Either way the value is the top-level field's, as written."""
    import pyarrow as pa

    from connectors import ndjson_values
    from connectors.discovery import discover_sources

    src_path = write(tmp_path / "one.ndjson", line + "\n")
    [src] = discover_sources([str(src_path)])
    schema = pa.schema([("amount", pa.string())])
    lines = [(1, line.encode())]
    quick = ndjson_values.build_numbers(src, schema, lines, frozenset({"amount"}))
    assert (quick is not None) == columnwise
    if quick is not None:
        assert quick.column(0).to_pylist() == [written]
    full = ndjson_values.build(src, schema, lines, frozenset({"amount"}))
    assert full.column(0).to_pylist() == [written]


def test_ndjson_text_in_a_number_field_says_how_to_send_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Numbers in the first block, a string later: an error naming the line, with the way out."""
    from connectors import ndjson_values

    monkeypatch.setattr(ndjson_values, "NDJSON_BLOCK_BYTES", 1 << 12)
    lines = [f'{{"line_id":"n{i}","ts":"{T0}","zip":10001}}\n' for i in range(1, 200)]
    lines.append(f'{{"line_id":"n200","ts":"{T0}","zip":"00501"}}\n')
    src = write(tmp_path / "z.ndjson", "".join(lines))
    _, err, _ = dry_run(tmp_path, [src], write_mapping(tmp_path, metadata={"zip": "zip"}))
    assert isinstance(err, SourceError), err
    assert "line 200" in str(err) and "'zip'" in str(err) and "type: string" in str(err)
    forced = {"zip": {"column": "zip", "type": "string"}}
    _, err, records = dry_run(tmp_path, [src], write_mapping(tmp_path, metadata=forced))
    assert err is None, err
    assert [a["metadata"]["zip"] for a in actions(records)] == ["10001"] * 199 + ["00501"]


def test_type_option_is_only_for_metadata_and_leaves_the_fingerprint_alone() -> None:
    base: dict[str, Any] = {
        "action_name": {"value": "x"},
        "time": "ts",
        "transaction_id": {"scope": SCOPE, "key": ["id"]},
        "metadata": {"zip": "zip"},
    }
    plain = parse_mapping(base)
    assert "type" not in json.dumps(plain.model_dump(mode="json"))
    forced = parse_mapping({**base, "metadata": {"zip": {"column": "zip", "type": "string"}}})
    assert forced.fingerprint() != plain.fingerprint()
    with pytest.raises(MappingError, match=r"`type` applies to metadata fields only.*company_id"):
        parse_mapping({**base, "company_id": {"column": "c", "type": "string"}})
    with pytest.raises(MappingError, match=r"metadata\.zip"):
        parse_mapping({**base, "metadata": {"zip": {"column": "zip", "type": "text"}}})


def test_type_number_rejects_a_value_that_is_not_one(tmp_path: Path) -> None:
    src = write(tmp_path / "t.csv", f"line_id,ts,qty\nl1,{T0}, 12.50 \nl2,{T0},twelve\nl3,{T0},\n")
    forced = {"qty": {"column": "qty", "type": "number"}}
    rejects = tmp_path / "rejects.ndjson"
    mapping = write_mapping(tmp_path, metadata=forced)
    summary, err, records = dry_run(tmp_path, [src], mapping, rejects=rejects)
    assert err is None
    assert summary.rows_rejected == 1 and len(records) == 2
    assert records[0].endswith('"metadata":{"qty":12.50}}') and '"metadata"' not in records[1]
    [reject] = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert reject["row"] == 2
    assert reject["reason"] == 'metadata "qty" is not a number (type: number)'


# --------------------------------------------------------------------------------------------
# 3. epoch times written as text honour unit:


def test_text_epochs_honour_the_unit_also_in_a_key_column(tmp_path: Path) -> None:
    src = write(
        tmp_path / "e.csv",
        "line_id,ts\nl1,1700000000\nl2,1700000000.5\nl3,1700000000.1234567\nl4,-1\n",
    )
    mapping = write_mapping(
        tmp_path,
        time={"column": "ts", "unit": "s"},
        transaction_id={"scope": SCOPE, "key": ["line_id", "ts"]},
        metadata={"ts": "ts"},
    )
    summary, err, records = dry_run(tmp_path, [src], mapping)
    assert err is None and summary.rows_rejected == 0, err
    got = actions(records)
    assert [a["request"]["time"] for a in got] == [
        "2023-11-14T22:13:20.000Z",
        "2023-11-14T22:13:20.500Z",
        "2023-11-14T22:13:20.123Z",
        "1969-12-31T23:59:59.000Z",
    ]
    assert got[1]["transaction_id"] == contract_id("l2", "1700000000.5")  # the key: as written
    assert got[1]["metadata"] == {"ts": Decimal("1700000000.5")}
    # milliseconds, from NDJSON strings
    nd = write(tmp_path / "e.ndjson", '{"line_id":"n1","ts":"1700000000123"}\n')
    mapping = write_mapping(tmp_path, time={"column": "ts", "unit": "ms"})
    _, err, records = dry_run(tmp_path, [nd], mapping)
    assert err is None, err
    assert actions(records)[0]["request"]["time"] == "2023-11-14T22:13:20.123Z"
    # without a unit, epochs are still a mapping error before anything is sent
    _, err, _ = dry_run(tmp_path, [src], write_mapping(tmp_path))
    assert isinstance(err, MappingError) and "unit" in str(err)


def test_epoch_unit_exact_to_the_microsecond() -> None:
    import pyarrow as pa

    from transforms.times import to_epoch_us

    text = pa.array(["1700000000.1234567", "1700000000123456789", "1.7e9", None, "x"])
    us, bad = to_epoch_us(text, tz="UTC", unit="s")
    assert us.to_pylist()[0] == 1_700_000_000_123_456 and us.to_pylist()[2] == 1_700_000_000 * 10**6
    assert bad.tolist() == [False, True, False, False, True]  # year > 9999; not a time
    us, _ = to_epoch_us(text, tz="UTC", unit="ns")
    assert us.to_pylist()[1] == 1_700_000_000_123_456


# --------------------------------------------------------------------------------------------
# 4. a CSV time column is parsed by our own rules for every row


def test_late_fractional_seconds_beyond_the_first_4_mb_load(tmp_path: Path) -> None:
    """The first 4 MB say `...:53+00:00`; later rows `...:53.5+00:00` and other offsets.
    pyarrow typed the column timestamp[s] from the first block and refused the file."""
    start = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)
    rows = []
    n = 100_000  # ~5.8 MB
    for i in range(n):
        t = (start + dt.timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%S")
        if i < n - 3:
            rows.append(f"line-{i:09d},cus_{i % 97:05d},{t}+00:00,{i % 1000}.25\n")
    late = [
        ("2024-06-02T10:00:53.5+00:00", "2024-06-02T10:00:53.500Z"),
        ("2024-06-02T10:00:53.123456789-05:30", "2024-06-02T15:30:53.123Z"),
        ("2024-06-02 10:00:53.25Z", "2024-06-02T10:00:53.250Z"),
    ]
    rows += [f"late-{k},cus_1,{t},1\n" for k, (t, _) in enumerate(late)]
    src = write(tmp_path / "big.csv", "line_id,customer,ts,amount\n" + "".join(rows))
    assert src.stat().st_size > 5 << 20
    mapping = write_mapping(tmp_path, company_id="customer", metadata={"amount": "amount"})
    summary, err, records = dry_run(tmp_path, [src], mapping, chunk_rows=20_000)
    assert err is None, err
    assert summary.actions_sent == n and summary.rows_rejected == 0
    assert [json.loads(r)["request"]["time"] for r in records[-3:]] == [u for _, u in late]
    first = json.loads(records[0])
    assert first["request"]["time"] == "2024-06-01T00:00:00.000Z"
    assert first["company_id"] == "cus_00000"
    # the preflight (validate reads the time column of every row) refused it the same way
    summary, err = run_plain(settings(tmp_path, [src], mapping, mode="validate", out=None))
    assert err is None and summary.actions_sent == n and summary.rows_rejected == 0, err


def test_ndjson_time_column_beyond_the_first_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pyarrow takes naive ISO strings for timestamp[s]; a later fractional second used to
    stop the file. The time column is read as text and parsed by our own rules."""
    from connectors import ndjson_values

    monkeypatch.setattr(ndjson_values, "NDJSON_BLOCK_BYTES", 1 << 12)
    lines = [f'{{"line_id":"n{i}","ts":"2024-06-01 10:00:{i % 60:02d}"}}\n' for i in range(2000)]
    lines.append('{"line_id":"late","ts":"2024-06-01 10:00:53.5"}\n')
    src = write(tmp_path / "t.ndjson", "".join(lines))
    _, err, records = dry_run(tmp_path, [src], write_mapping(tmp_path))
    assert err is None, err
    assert json.loads(records[-1])["request"]["time"] == "2024-06-01T10:00:53.500Z"


# --------------------------------------------------------------------------------------------
# 7. validate warns when no request.uri is mapped


def test_validate_warns_without_request_uri(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write(tmp_path / "v.csv", f"line_id,ts\nl1,{T0}\n")
    mapping = write_mapping(tmp_path, request={"ip_address": {"value": "127.0.0.1"}})
    summary, err = run_plain(settings(tmp_path, [src], mapping, mode="validate", out=None))
    assert err is None, err
    [warning] = summary.warnings
    assert "request.uri" in warning and "required" in warning
    assert "request: {uri: {value:" in warning
    cli_output.print_validate(summary.to_dict())
    printed = capsys.readouterr().out
    assert "warning: no request.uri is mapped" in printed
    summary, err = run_plain(settings(tmp_path, [src], write_mapping(tmp_path), mode="validate"))
    assert err is None and summary.warnings == []
