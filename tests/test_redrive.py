"""`moesif-backfill redrive` (issue 13 part 1): Firehose's failed-delivery objects on a moto
server S3, re-sent to the strict Firehose stand-in. Exact sets of delivered transaction_ids and
exact bytes; the rejects file; reruns, SIGKILL, --delete-after, --since/--until, the 30-day
rule and the dry-run report."""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from moesif_backfill.errors import CheckpointMismatchError, ConfigError, PreflightError
from pipeline.redrive import run_redrive
from pipeline.redrive_settings import RedriveSettings
from tests.standins.moto_firehose import LocalFirehose
from tests.standins.strict_firehose import StrictFirehose

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
CLI = [str(Path(sys.executable).parent / "moesif-backfill")]


def action(n: int, *, days_ago: float = 1, tid: bool = True) -> tuple[bytes, str]:
    """An action with its own formatting (so that re-serializing would show) and its id."""
    ident = str(uuid.UUID(int=n))
    when = (NOW - dt.timedelta(days=days_ago)).isoformat().replace("+00:00", "Z")
    tid_part = f'"transaction_id": "{ident}", ' if tid else ""
    text = (
        f'{{"action_name":"Billing",  {tid_part}"request":{{"time":"{when}"}},'
        f'"metadata":{{"amount":{n}.10,"plan":"caf\\u00e9"}}}}'
    )
    return text.encode(), ident


def fd_line(record: bytes, *, arrival: dt.datetime, gz: bool = False, code: str = "") -> bytes:
    data = gzip.compress(record) if gz else record
    ms = int(arrival.timestamp() * 1000)
    return json.dumps(
        {
            "attemptsMade": 4,
            "arrivalTimestamp": ms,
            "errorCode": code or "HttpEndpoint.DestinationException",
            "errorMessage": '{"requestId":"r","errorMessage":"boom"}',
            "attemptEndingTimestamp": ms + 300_000,
            "rawData": base64.b64encode(data).decode(),
            "subsequenceNumber": 0,
            "dataId": "49650-0",
        }
    ).encode()


def fd_key(prefix: str, arrival: dt.datetime, suffix: str = "") -> str:
    return (
        f"{prefix}{arrival:%Y/%m/%d/%H}/moesif-actions-1-{arrival:%Y-%m-%d-%H-%M-%S}-"
        f"{uuid.uuid4()}{suffix}"
    )


@dataclass
class Scenario:
    bucket: str
    s3: Any
    expected: dict[str, bytes] = field(default_factory=dict)  # transaction_id -> bytes
    keys: dict[str, str] = field(default_factory=dict)  # name -> key

    def put(self, name: str, key: str, lines: list[bytes], *, gz: bool = False) -> None:
        body = b"\n".join(lines) + b"\n"
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=gzip.compress(body) if gz else body)
        self.keys[name] = key

    def url(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.keys[name]}"

    def listed(self) -> set[str]:
        found = self.s3.list_objects_v2(Bucket=self.bucket).get("Contents", [])
        return {item["Key"] for item in found}


@pytest.fixture
def s3_bucket(moto_firehose: LocalFirehose) -> Iterator[Scenario]:
    moto_firehose.ensure()
    s3 = moto_firehose.s3_client()
    bucket = f"backup-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    yield Scenario(bucket, s3)


def good_actions(sc: Scenario, *numbers: int, days_ago: float = 1) -> list[bytes]:
    out = []
    for n in numbers:
        data, ident = action(n, days_ago=days_ago)
        sc.expected[ident] = data
        out.append(data)
    return out


@pytest.fixture
def scenario(s3_bucket: Scenario) -> Scenario:
    """Three objects under errors/ (plain, gzip'd, clean) and one under errors-old/."""
    sc = s3_bucket
    t = NOW - dt.timedelta(hours=20)
    (a1,) = good_actions(sc, 1)
    a2, a3, a4 = good_actions(sc, 2, 3, 4)
    no_tid, _ = action(90, tid=False)
    sc.put(
        "plain",
        fd_key("errors/", t),
        [
            fd_line(b"  " + a1 + b"\n", arrival=t),
            b"this line is not JSON",
            fd_line(b"[" + a2 + b",\n " + a3 + b" ," + a4 + b"]", arrival=t, code="Other"),
            fd_line(no_tid, arrival=t),
        ],
    )
    a5, a6, a7 = good_actions(sc, 5, 6, 7)
    bad_b64 = json.loads(fd_line(a1, arrival=t))
    bad_b64["rawData"] = "***not base64***"
    sc.put(
        "gz",
        fd_key("errors/", t, ".gz"),
        [
            fd_line(a5 + b"\n" + a6 + b"\n", arrival=t, gz=True),
            json.dumps(bad_b64).encode(),
            fd_line(a7, arrival=t, gz=True),
        ],
        gz=True,
    )
    a8, a9 = good_actions(sc, 8, 9)
    sc.put("clean", fd_key("errors/", t), [fd_line(a8, arrival=t), fd_line(a9, arrival=t)])
    outside, _ = action(100)
    sc.put("outside", fd_key("errors-old/", t), [fd_line(outside, arrival=t)])
    return sc


def settings(
    tmp_path: Path,
    moto: LocalFirehose,
    strict: StrictFirehose,
    stream: str,
    location: str,
    **extra: Any,
) -> RedriveSettings:
    return RedriveSettings(
        location=location,
        stream=stream,
        endpoint_url=strict.endpoint_url,
        s3_endpoint_url=moto.endpoint_url,
        region="us-east-1",
        checkpoint=str(tmp_path / "ckpt"),
        summary_json=tmp_path / "summary.json",
        **{"chunk_rows": 2, **extra},
    )


def rejects(tmp_path: Path, job: str) -> set[tuple[str, int, int | None]]:
    path = tmp_path / "ckpt" / job / "rejects.ndjson"
    entries = [json.loads(x) for x in path.read_text().splitlines()]
    return {(e["source"], e["line"], e.get("action")) for e in entries}


def test_redrive_sends_exactly_the_good_actions_byte_for_byte_then_a_rerun_sends_nothing(
    tmp_path: Path,
    scenario: Scenario,
    moto_firehose: LocalFirehose,
    strict_firehose: StrictFirehose,
    firehose_stream: str,
) -> None:
    loc = f"s3://{scenario.bucket}/errors"  # no trailing "/": errors-old/ must not match
    s = settings(tmp_path, moto_firehose, strict_firehose, firehose_stream, loc, job="rd")
    outcome = run_redrive(s)
    assert outcome.error is None, outcome.error
    got = strict_firehose.records(firehose_stream)
    assert sorted(got) == sorted(scenario.expected.values())  # the original bytes, one each
    assert set(strict_firehose.transaction_ids(firehose_stream)) == set(scenario.expected)
    summary = outcome.summary
    assert summary.status == "complete_with_rejects"
    assert (summary.actions_read, summary.actions_sent, summary.actions_rejected) == (12, 9, 3)
    assert (summary.lines_read, summary.lines_rejected) == (9, 2)
    assert summary.objects_total == 3 and summary.objects_complete == 3 and summary.accounted
    codes = {"HttpEndpoint.DestinationException": 8, "Other": 3, "(none)": 1}  # (none): not JSON
    assert summary.by_error_code == codes
    assert any("trailing '/'" in w for w in summary.warnings)
    assert rejects(tmp_path, "rd") == {
        (scenario.url("plain"), 2, None),
        (scenario.url("plain"), 4, 0),
        (scenario.url("gz"), 2, None),
    }
    # a rerun: everything was delivered or rejected already
    again = run_redrive(s)
    assert again.error is None
    assert len(strict_firehose.records(firehose_stream)) == 9
    assert (again.summary.actions_sent, again.summary.actions_skipped) == (0, 9)
    assert again.summary.actions_rejected_earlier == 3 and again.summary.accounted
    assert again.summary.status == "complete_with_rejects"
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["actions_skipped"] == 9 and on_disk["accounted"] is True


def test_delete_after_deletes_only_fully_delivered_objects_without_rejects(
    tmp_path: Path,
    scenario: Scenario,
    moto_firehose: LocalFirehose,
    strict_firehose: StrictFirehose,
    firehose_stream: str,
) -> None:
    loc = f"s3://{scenario.bucket}/errors/"
    s = settings(tmp_path, moto_firehose, strict_firehose, firehose_stream, loc, delete_after=True)
    outcome = run_redrive(s)
    assert outcome.error is None, outcome.error
    assert outcome.summary.objects_deleted == 1
    assert scenario.listed() == {scenario.keys[k] for k in ("plain", "gz", "outside")}
    kept = outcome.summary.objects_kept
    assert set(kept) == {scenario.url("plain"), scenario.url("gz")}
    assert all("rejected" in why for why in kept.values())
    assert set(strict_firehose.transaction_ids(firehose_stream)) == set(scenario.expected)


def test_since_until_send_only_the_lines_that_arrived_inside(
    tmp_path: Path,
    s3_bucket: Scenario,
    moto_firehose: LocalFirehose,
    strict_firehose: StrictFirehose,
    firehose_stream: str,
) -> None:
    sc = s3_bucket
    day1 = (NOW - dt.timedelta(days=3)).replace(hour=10, minute=0, second=0)
    day2, day3 = day1 + dt.timedelta(days=1), day1 + dt.timedelta(days=2)
    early = [fd_line(a, arrival=day1) for a in good_actions(sc, 1, 2)]
    inside = [fd_line(a, arrival=day2) for a in good_actions(sc, 3, 4, 5)]
    late = [fd_line(a, arrival=day3) for a in good_actions(sc, 6)]
    want = {str(uuid.UUID(int=n)) for n in (3, 4, 5)}
    sc.put("one", fd_key("errors/", day1), [*early, *inside, *late])
    s = settings(
        tmp_path,
        moto_firehose,
        strict_firehose,
        firehose_stream,
        f"s3://{sc.bucket}/errors/",
        since=day2.date().isoformat(),
        until=(day3.replace(hour=0)).isoformat(),
        delete_after=True,
    )
    outcome = run_redrive(s)
    assert outcome.error is None, outcome.error
    assert set(strict_firehose.transaction_ids(firehose_stream)) == want
    summary = outcome.summary
    assert (summary.actions_sent, summary.actions_outside_window) == (3, 3)
    assert summary.lines_outside_window == 3 and summary.status == "complete"
    assert summary.objects_deleted == 0  # lines outside the window are not delivered
    # another window for the same job: refused, nothing sent
    other = s.model_copy(update={"since": None})
    assert isinstance(run_redrive(other).error, CheckpointMismatchError)


def test_the_30_day_rule_refuse_skip_then_allow_sends_exactly_the_old_ones(
    tmp_path: Path,
    s3_bucket: Scenario,
    moto_firehose: LocalFirehose,
    strict_firehose: StrictFirehose,
    firehose_stream: str,
) -> None:
    sc = s3_bucket
    t = NOW - dt.timedelta(hours=3)
    new = good_actions(sc, 1, 2, 3)
    old = good_actions(sc, 11, 12, days_ago=40)
    sc.put("mix", fd_key("errors/", t), [fd_line(x, arrival=t) for x in (new[0], old[0], new[1])])
    sc.put("mix2", fd_key("errors/", t), [fd_line(b"[" + old[1] + b"," + new[2] + b"]", arrival=t)])
    loc = f"s3://{sc.bucket}/errors/"
    s = settings(tmp_path, moto_firehose, strict_firehose, firehose_stream, loc, job="old")
    refused = run_redrive(s)
    assert isinstance(refused.error, PreflightError)
    assert "2 action(s)" in str(refused.error) and "--allow-older-than-30-days" in str(
        refused.error
    )
    assert strict_firehose.records(firehose_stream) == []
    skip = s.model_copy(update={"skip_older_than_30_days": True})
    skipped = run_redrive(skip)
    assert skipped.error is None, skipped.error
    ids = {str(uuid.UUID(int=n)) for n in (1, 2, 3)}
    assert set(strict_firehose.transaction_ids(firehose_stream)) == ids
    assert (skipped.summary.actions_sent, skipped.summary.actions_too_old) == (3, 2)
    # without a flag the pending ones are refused again
    assert isinstance(run_redrive(s).error, PreflightError)
    allow = s.model_copy(update={"allow_older_than_30_days": True})
    allowed = run_redrive(allow)
    assert allowed.error is None, allowed.error
    delivered = strict_firehose.transaction_ids(firehose_stream)
    assert sorted(delivered) == sorted(ids | {str(uuid.UUID(int=n)) for n in (11, 12)})
    summary = allowed.summary
    assert (summary.actions_sent, summary.actions_skipped, summary.actions_too_old) == (2, 3, 0)
    assert summary.accounted and summary.status == "complete"


def test_dry_run_reports_by_error_code_and_day_and_sends_nothing(
    tmp_path: Path, scenario: Scenario, moto_firehose: LocalFirehose
) -> None:
    extra = NOW - dt.timedelta(days=2, hours=1)
    old = good_actions(scenario, 20, days_ago=45)
    scenario.put("old", fd_key("errors/", extra), [fd_line(old[0], arrival=extra, code="X")])
    s = RedriveSettings(
        location=f"s3://{scenario.bucket}/errors/",
        mode="dry-run",
        out=tmp_path / "out",
        s3_endpoint_url=moto_firehose.endpoint_url,
        region="us-east-1",
    )
    outcome = run_redrive(s)
    assert outcome.error is None, outcome.error
    summary = outcome.summary
    codes = {"HttpEndpoint.DestinationException": 8, "Other": 3, "(none)": 1, "X": 1}
    assert summary.by_error_code == codes
    day = (NOW - dt.timedelta(hours=20)).date().isoformat()
    assert summary.by_arrival_day == {extra.date().isoformat(): 1, day: 11, "(unknown)": 1}
    assert summary.actions_older_than_30_days == 1 and summary.actions_sent == 10
    assert any("more than 30 days old" in w for w in summary.warnings)
    written = b"".join(gzip.decompress(p.read_bytes()) for p in (tmp_path / "out").glob("*.gz"))
    assert sorted(written.splitlines()) == sorted(scenario.expected.values())
    assert summary.checkpoint is None and summary.firehose_calls == 0


def test_a_changed_object_is_an_error_naming_it_and_empty_or_missing_locations(
    tmp_path: Path,
    scenario: Scenario,
    moto_firehose: LocalFirehose,
    strict_firehose: StrictFirehose,
    firehose_stream: str,
) -> None:
    loc = f"s3://{scenario.bucket}/errors/"
    s = settings(tmp_path, moto_firehose, strict_firehose, firehose_stream, loc)
    assert run_redrive(s).error is None
    scenario.s3.put_object(Bucket=scenario.bucket, Key=scenario.keys["clean"], Body=b"{}\n")
    changed = run_redrive(s).error
    assert isinstance(changed, CheckpointMismatchError) and scenario.url("clean") in str(changed)
    empty = run_redrive(s.model_copy(update={"location": f"s3://{scenario.bucket}/nothing/"}))
    assert empty.error is None and empty.summary.status == "nothing_to_do"
    missing = run_redrive(s.model_copy(update={"location": "s3://no-such-bucket-xyz/errors/"}))
    assert isinstance(missing.error, ConfigError) and "no-such-bucket-xyz" in str(missing.error)


def _cli(
    tmp_path: Path, moto: LocalFirehose, strict: StrictFirehose, stream: str, loc: str
) -> list[str]:
    return [
        *CLI,
        "redrive",
        loc,
        "--stream",
        stream,
        "--endpoint-url",
        strict.endpoint_url,
        "--s3-endpoint-url",
        moto.endpoint_url,
        "--region",
        "us-east-1",
        "--checkpoint",
        str(tmp_path / "ckpt"),
        "--job",
        "cli",
        "--chunk-rows",
        "1",
        "--quiet",
    ]


def test_cli_end_to_end_sigkill_mid_redrive_then_rerun_loses_nothing(
    tmp_path: Path,
    scenario: Scenario,
    moto_firehose: LocalFirehose,
    strict_firehose: StrictFirehose,
    firehose_stream: str,
) -> None:
    args = _cli(
        tmp_path, moto_firehose, strict_firehose, firehose_stream, f"s3://{scenario.bucket}/errors/"
    )
    env = {**os.environ, "MOESIF_BACKFILL_FAILPOINTS": "chunk.acknowledged=4"}
    killed = subprocess.run(args, env=env, capture_output=True, timeout=120, check=False)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    first = set(strict_firehose.transaction_ids(firehose_stream))
    assert first and first < set(scenario.expected)
    env.pop("MOESIF_BACKFILL_FAILPOINTS")
    done = subprocess.run(
        [*args, "--summary-json", str(tmp_path / "s.json")],
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    err = done.stderr.decode()
    assert done.returncode == 3, err[-2000:]  # complete, with rejected lines
    assert set(strict_firehose.transaction_ids(firehose_stream)) == set(scenario.expected)
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["accounted"] and summary["actions_sent"] + summary["actions_skipped"] == 9
    assert "rejects file" in err and "Traceback" not in err


def test_settings_from_flags_and_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    from moesif_backfill import cli
    from moesif_backfill.cli_flags import apply_env
    from moesif_backfill.cli_redrive import redrive_settings

    def parse(*argv: str, env: dict[str, str] | None = None) -> RedriveSettings:
        args = cli.build_parser().parse_args(["redrive", *argv])
        apply_env(args, env or {})
        return redrive_settings(args)

    env = {"MOESIF_BACKFILL_STREAM": "s", "MOESIF_BACKFILL_SINCE": "2026-11-02"}
    s = parse("s3://b/errors/", "--until", "2026-11-03T12:00:00+01:00", env=env)
    assert s.since == dt.datetime(2026, 11, 2, tzinfo=dt.UTC) and s.streams == ["s"]
    assert s.window_ms == (1_793_577_600_000, 1_793_703_600_000)  # 2026-11-03T11:00Z
    with pytest.raises(ConfigError, match="no time zone"):
        parse("s3://b/errors/", "--since", "2026-11-02T10:00:00", env=env)
    assert parse("s3://b/errors/", "--ledger", "s3://l/", env=env).ledger == "s3://l/"
    with pytest.raises(ConfigError, match="not with --dry-run"):
        parse("s3://b/errors/", "--dry-run", "--out", "o", "--delete-after")
    with pytest.raises(ConfigError, match="give --stream NAME"):
        parse("s3://b/errors/")
    with pytest.raises(ConfigError, match="redrive sends to one stream"):
        parse("s3://b/errors/", "--stream", "a", "--stream", "b")
    # --ledger and MOESIF_BACKFILL_LEDGER apply to redrive (tests/test_redrive_ledger.py)
    assert parse("s3://b/errors/", env={**env, "MOESIF_BACKFILL_LEDGER": "s3://l/"}).ledger == (
        "s3://l/"
    )
    assert parse("s3://b/errors/", env=env).ledger is None


def test_stop_mid_redrive_commits_only_acknowledged_chunks_and_a_rerun_resumes(
    tmp_path: Path,
    s3_bucket: Scenario,
    moto_firehose: LocalFirehose,
    strict_firehose: StrictFirehose,
    firehose_stream: str,
) -> None:
    import threading
    import time

    from moesif_backfill.errors import RunInterruptedError

    sc = s3_bucket
    t = NOW - dt.timedelta(hours=2)
    sc.put(
        "big",
        fd_key("errors/", t),
        [fd_line(a, arrival=t) for a in good_actions(sc, *range(1, 601))],
    )
    s = settings(
        tmp_path,
        moto_firehose,
        strict_firehose,
        firehose_stream,
        f"s3://{sc.bucket}/errors/",
        chunk_rows=50,
        max_records_per_second=400,
    )
    stop = threading.Event()
    result: list[Any] = []
    worker = threading.Thread(target=lambda: result.append(run_redrive(s, stop=stop)))
    worker.start()
    deadline = time.monotonic() + 60
    while len(strict_firehose.records(firehose_stream)) < 120:
        assert time.monotonic() < deadline and worker.is_alive()
        time.sleep(0.01)
    stop.set()
    worker.join(60)
    (first,) = result
    assert isinstance(first.error, RunInterruptedError)
    committed = first.summary.actions_sent
    assert 0 < committed < 600 and committed % 50 == 0
    assert len(set(strict_firehose.transaction_ids(firehose_stream))) >= committed
    again = run_redrive(s)
    assert again.error is None, again.error
    assert set(strict_firehose.transaction_ids(firehose_stream)) == set(sc.expected)
    assert again.summary.actions_skipped == committed
    assert again.summary.actions_sent == 600 - committed and again.summary.accounted


def test_a_delivery_failure_ends_the_run_with_nothing_committed_that_was_not_acknowledged(
    tmp_path: Path,
    scenario: Scenario,
    moto_firehose: LocalFirehose,
    strict_firehose: StrictFirehose,
    firehose_stream: str,
) -> None:
    from moesif_backfill.errors import DeliveryError

    loc = f"s3://{scenario.bucket}/errors/"
    s = settings(
        tmp_path,
        moto_firehose,
        strict_firehose,
        firehose_stream,
        loc,
        retry_attempts=1,
        retry_budget_s=0,
    )
    strict_firehose.configure(server_error_rate=1.0)
    failed = run_redrive(s)
    assert isinstance(failed.error, DeliveryError), failed.error
    assert failed.summary.status == "failed" and failed.summary.actions_sent == 0
    assert strict_firehose.records(firehose_stream) == []
    strict_firehose.reset_faults()
    done = run_redrive(s)
    assert done.error is None, done.error
    assert sorted(strict_firehose.records(firehose_stream)) == sorted(scenario.expected.values())
    assert done.summary.actions_sent == 9 and done.summary.accounted


def test_transient_errors_are_retried_within_the_budget_counting_each_action_once(
    tmp_path: Path,
    scenario: Scenario,
    moto_firehose: LocalFirehose,
    strict_firehose: StrictFirehose,
    firehose_stream: str,
) -> None:
    import threading

    loc = f"s3://{scenario.bucket}/errors/"
    s = settings(
        tmp_path,
        moto_firehose,
        strict_firehose,
        firehose_stream,
        loc,
        chunk_rows=1,
        retry_attempts=1,
        retry_budget_s=20,
    )
    strict_firehose.configure(server_error_rate=0.5)
    healed = threading.Timer(2.5, strict_firehose.reset_faults)
    healed.start()
    try:
        outcome = run_redrive(s)
    finally:
        healed.cancel()
    assert outcome.error is None, outcome.error
    assert set(strict_firehose.transaction_ids(firehose_stream)) == set(scenario.expected)
    summary = outcome.summary
    assert (summary.actions_sent, summary.actions_rejected, summary.actions_skipped) == (9, 3, 0)
    assert summary.accounted and summary.lines_rejected == 2
    assert summary.server_errors > 0  # the faults were met, and retried


def test_ctrl_c_mid_redrive_exits_130_and_a_rerun_delivers_the_rest(
    tmp_path: Path,
    s3_bucket: Scenario,
    moto_firehose: LocalFirehose,
    strict_firehose: StrictFirehose,
    firehose_stream: str,
) -> None:
    import signal
    import time

    sc = s3_bucket
    t = NOW - dt.timedelta(hours=2)
    lines = [fd_line(a, arrival=t) for a in good_actions(sc, *range(1, 1501))]
    sc.put("big", fd_key("errors/", t, ".gz"), lines, gz=True)
    args = [
        *_cli(
            tmp_path, moto_firehose, strict_firehose, firehose_stream, f"s3://{sc.bucket}/errors/"
        ),
        "--chunk-rows",
        "100",
        "--max-records-per-second",
        "300",
    ]
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    deadline = time.monotonic() + 60
    while len(strict_firehose.records(firehose_stream)) < 200:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
        time.sleep(0.02)
    since = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err.decode()[-2000:]
    assert time.monotonic() - since < 6
    text = err.decode()
    assert "Traceback" not in text and text.count("interrupted") == 1, text
    assert len(strict_firehose.records(firehose_stream)) < 1500
    done = subprocess.run(args[:-2], capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert set(strict_firehose.transaction_ids(firehose_stream)) == set(sc.expected)
