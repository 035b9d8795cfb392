"""Firehose quotas: the strict endpoint enforces a per-stream records/s and MiB/s quota, and the
sender given the same limits (and the CLI run with them) achieves it without being throttled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from connectors.firehose import FirehoseSender, RetryPolicy
from connectors.firehose_client import make_firehose_client
from tests.datasets import expected_ids, write_mapping, write_payments
from tests.standins.strict_firehose import StrictFirehose

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024


def _put(client: Any, stream: str, records: list[bytes]) -> dict[str, Any]:
    response: dict[str, Any] = client.put_record_batch(
        DeliveryStreamName=stream, Records=[{"Data": r} for r in records]
    )
    return response


def _throttled(client: Any, stream: str, records: list[bytes]) -> bool:
    try:
        _put(client, stream, records)
    except ClientError as exc:
        error = exc.response["Error"]
        assert (error["Code"], error["Message"]) == ("ServiceUnavailableException", "Slow down.")
        assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 400
        return True
    return False


# -- the endpoint enforces the quota -------------------------------------------------------------


@pytest.mark.integration
def test_records_quota_refuses_whole_calls_per_stream(
    strict_firehose: StrictFirehose, strict_firehose_client: Any, firehose_stream: str
) -> None:
    client, stream = strict_firehose_client, firehose_stream
    other = f"other-{uuid.uuid4().hex[:8]}"
    strict_firehose.create_stream(other)
    strict_firehose.configure(quota_records_per_second=1_000)
    assert not _throttled(client, stream, [b"a"] * 500)  # a full bucket: one second's worth
    assert not _throttled(client, stream, [b"b"] * 450)
    assert _throttled(client, stream, [b"c"] * 500)  # refused whole, nothing stored
    assert not _throttled(client, other, [b"d"] * 500)  # another stream has its own quota
    counters = strict_firehose.stream_counters(stream)
    assert counters["throttled"] == counters["quota_throttled"] == 1
    assert counters["records_stored"] == 950 and b"c" not in strict_firehose.records(stream)
    assert strict_firehose.stream_counters(other)["throttled"] == 0
    time.sleep(0.5)  # refills 500 records (plus the 50 left)
    assert not _throttled(client, stream, [b"e"] * 500)
    assert strict_firehose.stats()["quota"] == {
        "records_per_second": 1_000,
        "mib_per_second": 0.0,
        "burst_s": 1.0,
    }


@pytest.mark.integration
def test_bytes_quota_counts_data_bytes_and_a_huge_call_needs_a_full_bucket(
    strict_firehose: StrictFirehose, strict_firehose_client: Any, firehose_stream: str
) -> None:
    client, stream = strict_firehose_client, firehose_stream
    strict_firehose.configure(quota_mib_per_second=0.5)  # 524,288 bytes/s
    assert not _throttled(client, stream, [b"x" * 100_000] * 4)  # 400,000 bytes
    assert _throttled(client, stream, [b"y" * 100_000] * 2)  # 200,000 more: over the bucket
    assert not _throttled(client, stream, [b"z" * 100_000])
    # A call larger than the whole bucket fits only a full one, and overdraws it.
    strict_firehose.configure(quota_mib_per_second=0.5)  # setting the quota refills
    assert not _throttled(client, stream, [b"w" * 1_000_000])
    assert _throttled(client, stream, [b"v"])  # in debt for about a second
    counters = strict_firehose.stream_counters(stream)
    assert counters["quota_throttled"] == 2
    assert counters["bytes_stored"] == 500_000 + 1_000_000


@pytest.mark.integration
def test_quota_through_the_control_api_and_the_cli(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.standins.strict_firehose",
            "--stream",
            "q",
            "--quota-records-per-second",
            "10",
            "--quota-mib-per-second",
            "2",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,  # `-m tests.standins...` resolves from the repository root
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        with urllib.request.urlopen(f"{url}/_strict/faults", timeout=5) as response:
            faults = json.loads(response.read())
        assert faults["quota_records_per_second"] == 10 and faults["quota_mib_per_second"] == 2
        client = make_firehose_client(region="us-east-1", endpoint_url=url)
        assert not _throttled(client, "q", [b"x"] * 10)
        assert _throttled(client, "q", [b"x"])
        body = json.dumps({"quota_records_per_second": 0}).encode()
        request = urllib.request.Request(f"{url}/_strict/faults", data=body, method="POST")
        with urllib.request.urlopen(request, timeout=5) as response:
            assert json.loads(response.read())["quota_records_per_second"] == 0
        assert not _throttled(client, "q", [b"x"] * 500)
        with urllib.request.urlopen(f"{url}/_strict/stats", timeout=5) as response:
            stats = json.loads(response.read())
        assert stats["streams"]["q"]["quota_throttled"] == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def test_negative_quota_is_refused(strict_firehose: StrictFirehose) -> None:
    with pytest.raises(ValueError, match="quotas must not be negative"):
        strict_firehose.configure(quota_mib_per_second=-1)


# -- the client meets the quota ------------------------------------------------------------------


class DeliveryClock:
    """Polls the endpoint: when the first and the last of `total` new records (stored after
    entering) reached these streams."""

    def __init__(self, server: StrictFirehose, streams: str | list[str], total: int) -> None:
        self.server, self.total = server, total
        self.streams = [streams] if isinstance(streams, str) else streams
        self.first: float | None = None
        self.first_count = 0
        self.last: float | None = None
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._stop = threading.Event()

    def _stored(self) -> int:
        return sum(self.server.stream_counters(s)["records_stored"] for s in self.streams)

    def __enter__(self) -> DeliveryClock:
        self.base = self._stored()  # records stored before: not this run's
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # The poller ends by itself once it saw every record stored; stopping it at once could
        # beat its last look (the senders' futures resolve as the last records are stored).
        self._thread.join(timeout=10)
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        while not self._stop.wait(0.01):
            stored = self._stored() - self.base
            if stored > 0 and self.first is None:
                self.first, self.first_count = time.monotonic(), stored
            if stored >= self.total:
                self.last = time.monotonic()
                return

    def rate(self) -> float:
        """Records/s from the first stored call to the last (the first call excluded)."""
        assert self.first is not None and self.last is not None
        return (self.total - self.first_count) / (self.last - self.first)


def _big_actions(count: int, size: int) -> list[bytes]:
    return [
        json.dumps({"transaction_id": str(uuid.uuid4()), "p": "x" * size}).encode()
        for _ in range(count)
    ]


@pytest.mark.integration
def test_sender_shaped_by_bytes_meets_a_mib_quota(
    strict_firehose: StrictFirehose, strict_firehose_client: Any, firehose_stream: str
) -> None:
    """1 KB records: the 1 MiB/s quota binds before 2,000 records/s; >= 90%, < 1% throttled."""
    strict_firehose.configure(quota_records_per_second=2_000, quota_mib_per_second=1)
    records = _big_actions(6_000, 1_000)
    nbytes = sum(map(len, records))
    sender = FirehoseSender(
        strict_firehose_client,
        firehose_stream,
        max_in_flight=8,
        max_records_per_second=2_000,
        max_mib_per_second=1,
        retry=RetryPolicy(max_attempts=40),
    )
    with DeliveryClock(strict_firehose, firehose_stream, len(records)) as clock:
        futures = [sender.submit(records[i : i + 1_000]) for i in range(0, len(records), 1_000)]
        assert sum(f.result(timeout=60) for f in futures) == len(records)
    sender.close()
    byte_rate = clock.rate() * nbytes / len(records)
    counters = strict_firehose.stream_counters(firehose_stream)
    print(f"bytes-shaped: {byte_rate / MIB:.3f} MiB/s, throttled {counters['throttled']}")
    assert byte_rate >= 0.9 * MIB
    assert counters["throttled"] < 0.01 * counters["put_calls"]


@pytest.mark.e2e
def test_cli_with_the_quota_as_limits_achieves_90_percent_under_1_percent_throttled(
    tmp_path: Path, prefect_api: str, strict_firehose: StrictFirehose, firehose_stream: str
) -> None:
    rows = 24_000  # 12 s at 2,000 records/s
    src = write_payments(tmp_path / "p.parquet", 1, rows)
    write_mapping(tmp_path / "m.yaml")
    strict_firehose.configure(quota_records_per_second=2_000, quota_mib_per_second=1)
    summary_path = tmp_path / "summary.json"
    args = [
        *(sys.executable, "-m", "moesif_backfill.cli", "run", str(src)),
        *("--mapping", str(tmp_path / "m.yaml"), "--stream", firehose_stream),
        *("--endpoint-url", strict_firehose.endpoint_url, "--region", "us-east-1"),
        *("--checkpoint", str(tmp_path / "ckpt"), "--summary-json", str(summary_path)),
        *("--max-records-per-second", "2000", "--max-mib-per-second", "1", "--quiet"),
    ]
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    with DeliveryClock(strict_firehose, firehose_stream, rows) as clock:
        done = subprocess.run(args, env=env, capture_output=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert set(strict_firehose.transaction_ids(firehose_stream)) == expected_ids(1, rows)
    summary = json.loads(summary_path.read_text())
    counters = strict_firehose.stream_counters(firehose_stream)
    rate = clock.rate()
    print(
        f"CLI shaped: {rate:,.0f} records/s = {rate / 2_000:.1%} of the quota; throttled "
        f"{counters['throttled']} of {counters['put_calls']} calls; expected "
        f"{summary['expected_send_s']} s, took {summary['duration_s']} s"
    )
    assert rate >= 0.9 * 2_000
    assert counters["throttled"] < 0.01 * counters["put_calls"]
    assert summary["throttled_calls"] == counters["throttled"]
    assert summary["expected_send_s"] == pytest.approx(rows / 2_000, rel=1e-3)
    assert summary["send_limits"] == {
        "records_per_second": 2_000,
        "mib_per_second": 1,
        "streams": 1,
    }
    assert "expected send time 12.0s at 2,000 records/s and 1 MiB/s" in done.stderr.decode()
