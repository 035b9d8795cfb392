"""`moesif-backfill redrive --sink moesif`: Firehose's failed deliveries (moto server S3) re-sent
straight to the Collector stand-in over real HTTP. Exact bytes and ids; an action the Collector
refuses on its own (413) is rejected with its object key and line; a wrong application id
(401) stops with exit 2 before anything is committed, and the id is written nowhere."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from moesif_backfill.cli import main
from tests.standins.collector import CollectorStandin
from tests.standins.moto_firehose import LocalFirehose
from tests.test_redrive import NOW, Scenario, action, fd_key, fd_line, good_actions

pytestmark = pytest.mark.integration

APP_ID = "APPID-redrive-3c9d1b7e-distinct"


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch) -> Iterator[CollectorStandin]:
    monkeypatch.setenv("MOESIF_APPLICATION_ID", APP_ID)
    for name in [k for k in os.environ if k.startswith("MOESIF_BACKFILL_")]:
        monkeypatch.delenv(name)
    with CollectorStandin(APP_ID) as standin:
        yield standin


@pytest.fixture
def bucket(moto_firehose: LocalFirehose) -> Scenario:
    moto_firehose.ensure()
    s3 = moto_firehose.s3_client()
    name = f"backup-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return Scenario(name, s3)


def redrive(tmp_path: Path, moto: LocalFirehose, sc: Scenario, url: str, *extra: str) -> int:
    return main(
        [
            "redrive",
            f"s3://{sc.bucket}/errors/",
            *("--sink", "moesif", "--moesif-url", url),
            *("--s3-endpoint-url", moto.endpoint_url, "--region", "us-east-1"),
            *("--checkpoint", str(tmp_path / "ckpt"), "--job", "rd"),
            *("--summary-json", str(tmp_path / "summary.json")),
            *("--retry-attempts", "6", "--chunk-rows", "2", "--quiet"),
            *extra,
        ]
    )


def summary(tmp_path: Path) -> dict[str, object]:
    doc: dict[str, object] = json.loads((tmp_path / "summary.json").read_text())
    return doc


def written_nowhere(tmp_path: Path, *texts: str) -> None:
    for text in texts:
        assert APP_ID not in text
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files
    for path in files:
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        assert APP_ID.encode() not in data, path


def test_redrive_to_the_collector_sends_the_original_bytes_and_rejects_a_refused_action(
    tmp_path: Path,
    bucket: Scenario,
    moto_firehose: LocalFirehose,
    collector: CollectorStandin,
    capsys: pytest.CaptureFixture[str],
) -> None:
    t = NOW - dt.timedelta(hours=3)
    a1, a2, a3 = good_actions(bucket, 1, 2, 3)
    big, big_id = action(4)
    big = big.replace(b'"plan":"caf\\u00e9"', b'"plan":"' + b"x" * 6_000 + b'"')
    bucket.put(
        "one",
        fd_key("errors/", t, ".gz"),
        [fd_line(b"[" + a1 + b", " + a2 + b"]", arrival=t, gz=True), fd_line(big, arrival=t)],
        gz=True,
    )
    bucket.put("two", fd_key("errors/", t), [fd_line(a3, arrival=t)])
    collector.too_large_over(4_000)  # the big action alone is over it: 413, then refused

    assert redrive(tmp_path, moto_firehose, bucket, collector.url) == 3
    delivered = collector.delivered_ids()
    assert sorted(delivered) == sorted(bucket.expected)  # once each, not the refused one
    assert big_id not in delivered
    bodies = b"\n".join(collector.bodies())
    for data in bucket.expected.values():
        assert data in bodies  # sent exactly as Firehose had it, never re-serialized
    s = summary(tmp_path)
    assert (s["sink"], s["actions_read"], s["actions_sent"]) == ("moesif", 4, 3)
    assert (s["actions_rejected"], s["records_refused"], s["accounted"]) == (1, 1, True)
    entries = [
        json.loads(line)
        for line in (tmp_path / "ckpt" / "rd" / "rejects.ndjson").read_text().splitlines()
    ]
    assert [(e["source"], e["line"], e["transaction_id"]) for e in entries] == [
        (bucket.url("one"), 2, big_id)
    ]
    assert "413" in entries[0]["reason"]
    # a rerun sends nothing: delivered or rejected already
    assert redrive(tmp_path, moto_firehose, bucket, collector.url) == 3
    assert sorted(collector.delivered_ids()) == sorted(bucket.expected)
    again = summary(tmp_path)
    assert (again["actions_sent"], again["actions_skipped"]) == (0, 3)
    out = capsys.readouterr()
    assert "moesif calls" in out.err
    written_nowhere(tmp_path, out.out, out.err)


def test_a_wrong_application_id_stops_with_exit_2_before_anything_is_committed(
    tmp_path: Path,
    bucket: Scenario,
    moto_firehose: LocalFirehose,
    collector: CollectorStandin,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    t = NOW - dt.timedelta(hours=3)
    lines = [fd_line(a, arrival=t) for a in good_actions(bucket, 1, 2, 3)]
    bucket.put("one", fd_key("errors/", t), lines)
    wrong = "APPID-wrong-77aa"
    monkeypatch.setenv("MOESIF_APPLICATION_ID", wrong)
    assert redrive(tmp_path, moto_firehose, bucket, collector.url) == 2
    assert collector.delivered_ids() == []
    assert summary(tmp_path)["chunks_committed"] == 0
    out = capsys.readouterr()
    assert "application id" in out.err.lower()
    for text in (out.out, out.err):
        assert wrong not in text
    written_nowhere(tmp_path, out.out, out.err)
    for path in (p for p in tmp_path.rglob("*") if p.is_file()):
        assert wrong.encode() not in path.read_bytes()
    # with the right id, a rerun delivers everything
    monkeypatch.setenv("MOESIF_APPLICATION_ID", APP_ID)
    assert redrive(tmp_path, moto_firehose, bucket, collector.url) == 0
    assert sorted(collector.delivered_ids()) == sorted(bucket.expected)


def test_without_an_application_id_nothing_is_read(
    tmp_path: Path,
    bucket: Scenario,
    moto_firehose: LocalFirehose,
    collector: CollectorStandin,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("MOESIF_APPLICATION_ID")
    assert redrive(tmp_path, moto_firehose, bucket, collector.url) == 2
    assert "MOESIF_APPLICATION_ID" in capsys.readouterr().err
    assert not (tmp_path / "ckpt").exists()


def test_an_action_over_the_per_action_limit_is_rejected_not_sent(
    tmp_path: Path,
    bucket: Scenario,
    moto_firehose: LocalFirehose,
    collector: CollectorStandin,
) -> None:
    t = NOW - dt.timedelta(hours=3)
    (small,) = good_actions(bucket, 1)
    big, big_id = action(2)
    big = big.replace(b'"plan":"caf\\u00e9"', b'"plan":"' + b"y" * 2_000 + b'"')
    bucket.put("one", fd_key("errors/", t), [fd_line(small, arrival=t), fd_line(big, arrival=t)])
    extra = ("--moesif-action-max-bytes", "1500")
    assert redrive(tmp_path, moto_firehose, bucket, collector.url, *extra) == 3
    assert collector.delivered_ids() == list(bucket.expected)
    assert collector.stats()["accepted_requests"] == 1  # the big one never left
    entries = [
        json.loads(line)
        for line in (tmp_path / "ckpt" / "rd" / "rejects.ndjson").read_text().splitlines()
    ]
    assert [(e["source"], e["line"], e["action"]) for e in entries] == [(bucket.url("one"), 2, 0)]
    assert "--moesif-action-max-bytes" in entries[0]["reason"]
    s = summary(tmp_path)
    assert (s["actions_sent"], s["actions_rejected"], s["accounted"]) == (1, 1, True)
    assert big_id not in collector.delivered_ids()
