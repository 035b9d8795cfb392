"""A torn or corrupted checkpoint, end to end (plain-Python pipeline, strict Firehose endpoint).

A run stops part-way (the stream disappears), leaving its file's shard checkpoint
``<job>.shard-<sid>/state.json`` (chunks 0-2 committed) and ``state.prev.json`` (chunks 0-1).
Then the checkpoint is damaged and the job rerun:

* current generation truncated, emptied, not JSON, failing its checksum, or missing: the rerun
  resumes from the previous generation: it re-sends one chunk, skips only chunks that had been
  delivered, and every expected transaction_id ends up delivered;
* a checkpoint written by a newer format: the run stops before sending anything, with a
  CheckpointError that says so (it never falls back to an older generation or starts over);
* both generations damaged: CheckpointError naming both files and ``--reset``; nothing is sent.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from connectors.checkpoint import FORMAT_VERSION
from moesif_backfill.errors import CheckpointError, PermanentDeliveryError
from pipeline.settings import RunSettings
from tests.datasets import expected_ids, write_payments
from tests.runner import file_progress, run_plain, settings_for, shard_dir
from tests.standins.strict_firehose import StrictFirehose

pytestmark = pytest.mark.integration

ROWS = 6_000
CHUNK = 1_000
JOB = "test-job"


def chunk_ids(chunk: int) -> set[str]:
    return expected_ids(1 + chunk * CHUNK, CHUNK)


class PartialRun:
    """A job stopped part-way: chunks 0-2 committed, half of chunk 3 on the server."""

    def __init__(self, tmp: Path, server: StrictFirehose, stream: str) -> None:
        self.server, self.stream = server, stream
        self.src = write_payments(tmp / "p.parquet", 1, ROWS)
        self.settings: RunSettings = settings_for(
            tmp,
            [self.src],
            stream=stream,
            endpoint_url=server.endpoint_url,
            chunk_rows=CHUNK,
            chunks_in_flight=1,  # one call at a time: which chunks get committed is fixed
            max_in_flight=1,
        )
        server.configure(delete_stream_after_calls=7)  # 3 chunks of 2 calls, then half a chunk
        summary, err = run_plain(self.settings)
        assert isinstance(err, PermanentDeliveryError), err
        assert summary.actions_sent == 3 * CHUNK and summary.accounted
        self.dir = shard_dir(self.settings.checkpoint, JOB, self.src)
        self.delivered = set(server.transaction_ids(stream))
        assert self.delivered == expected_ids(1, 3 * CHUNK + 500)
        assert self.done(self.dir / "state.json") == {0, 1, 2}
        assert self.done(self.dir / "state.prev.json") == {0, 1}
        # The stream comes back (empty); any damage to the checkpoint is done by the test.
        server.reset_faults()
        server.create_stream(stream)

    def done(self, path: Path) -> set[int]:
        body = json.loads(path.read_bytes())["body"]
        prog = body["files"][str(self.src.resolve())]
        return {c for a, b in prog["done"] for c in range(a, b)}

    def put_calls(self) -> int:
        return self.server.stream_counters(self.stream)["put_calls"]


@pytest.fixture
def partial(tmp_path: Path, strict_firehose: StrictFirehose, firehose_stream: str) -> PartialRun:
    return PartialRun(tmp_path, strict_firehose, firehose_stream)


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])


def _invalid_json(p: Path) -> None:
    p.write_bytes(b'{"format_version": 1, "sha256": "0", "body": {"job": ')


def _empty(p: Path) -> None:
    p.write_bytes(b"")


def _checksum_fails(p: Path) -> None:
    data = p.read_bytes()
    assert b'"rows_sent":3000' in data
    p.write_bytes(data.replace(b'"rows_sent":3000', b'"rows_sent":6000'))  # valid JSON, wrong


def _missing(p: Path) -> None:
    p.unlink()


DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated": _truncate,
    "invalid-json": _invalid_json,
    "zero-bytes": _empty,
    "checksum-mismatch": _checksum_fails,
    "missing": _missing,
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_current_generation_recovers_from_previous_without_loss(
    damage: str, partial: PartialRun, caplog: pytest.LogCaptureFixture
) -> None:
    DAMAGE[damage](partial.dir / "state.json")
    with caplog.at_level(logging.WARNING, logger="connectors.checkpoint"):
        summary, err = run_plain(partial.settings)
    assert err is None, err
    assert any("previous generation" in r.getMessage() for r in caplog.records), caplog.text
    # resumed from state.prev.json (chunks 0-1): chunk 2 is sent again, nothing else skipped
    assert summary.rows_skipped == 2 * CHUNK
    assert summary.actions_sent == ROWS - 2 * CHUNK
    assert summary.accounted and summary.rows_read == ROWS
    skipped = chunk_ids(0) | chunk_ids(1)
    assert skipped <= partial.delivered  # nothing skipped that had not been delivered
    resent = set(partial.server.transaction_ids(partial.stream))
    assert resent == expected_ids(1, ROWS) - skipped
    assert partial.delivered | resent == expected_ids(1, ROWS)  # every row delivered
    # the checkpoint is whole again: another run skips everything and sends nothing
    again, err = run_plain(partial.settings)
    assert err is None and again.actions_sent == 0 and again.rows_skipped == ROWS
    prog = file_progress(partial.settings.checkpoint, JOB, partial.src)
    assert prog is not None and prog.rows_sent == ROWS


def _newer(body_only: bool) -> Callable[[Path], None]:
    def damage(p: Path) -> None:
        envelope = json.loads(p.read_bytes())
        body: dict[str, Any] = envelope["body"]
        body["format_version"] = FORMAT_VERSION + 1
        body["written_by"] = "a future moesif-backfill"
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        envelope["sha256"] = hashlib.sha256(canonical.encode()).hexdigest()  # otherwise intact
        if not body_only:
            envelope["format_version"] = FORMAT_VERSION + 1
        p.write_text(json.dumps(envelope))

    return damage


@pytest.mark.parametrize(
    ("where", "body_only"),
    [("state.json", False), ("state.json", True), ("state.prev.json", False)],
    ids=["envelope-and-body", "body-only", "previous-newer-current-torn"],
)
def test_newer_format_stops_before_sending(
    where: str, body_only: bool, partial: PartialRun
) -> None:
    _newer(body_only)(partial.dir / where)
    if where == "state.prev.json":
        _truncate(partial.dir / "state.json")  # the fallback itself is newer: no way around it
    before = {p.name: p.read_bytes() for p in partial.dir.glob("state*.json")}
    summary, err = run_plain(partial.settings)
    assert isinstance(err, CheckpointError), err
    assert err.exit_code == 1 and summary.status == "failed"
    message = str(err)
    assert "newer" in message and "upgrade" in message, message
    assert str(partial.dir / where) in message
    assert f"format {FORMAT_VERSION + 1}" in message
    # stopped before sending, and left the checkpoint as it was: never starts from zero
    assert partial.put_calls() == 0 and summary.actions_sent == summary.rows_read == 0
    assert {p.name: p.read_bytes() for p in partial.dir.glob("state*.json")} == before


def test_both_generations_damaged_stop_with_reset_advice(partial: PartialRun) -> None:
    _truncate(partial.dir / "state.json")
    _invalid_json(partial.dir / "state.prev.json")
    summary, err = run_plain(partial.settings)
    assert isinstance(err, CheckpointError), err
    message = str(err)
    assert str(partial.dir / "state.json") in message
    assert str(partial.dir / "state.prev.json") in message
    assert "--reset" in message and "cannot be recovered" in message
    assert partial.put_calls() == 0 and summary.actions_sent == 0
    # the way out the message names: --reset starts the job over and delivers every row
    fresh, err = run_plain(partial.settings.model_copy(update={"reset": True}))
    assert err is None and fresh.actions_sent == ROWS and fresh.rows_skipped == 0
    assert set(partial.server.transaction_ids(partial.stream)) == expected_ids(1, ROWS)
