"""Reruns tell the truth (issue 12, items 3, 4 and 7), against the strict Firehose stand-in:

* rows rejected by an earlier run count in `rows_rejected` of every later run
  (`rows_rejected_earlier` says how many), not as skipped; the exit code stays 3 while the
  job's rejects file lists any row; `--reprocess FILE` rewrites the file's lines, so a fixed
  row disappears from it;
* `--dry-run` previews the input whatever a send delivered, with the exit codes of `run`;
* `--skip-older-than-30-days` sends the rows inside Moesif's window, counts the others
  (`rows_too_old`) and leaves them pending, so that a later `--allow-older-than-30-days` run
  sends exactly them (same transaction_ids, no duplicates);
* in every run rows_read == actions_sent + rows_rejected + rows_skipped + rows_outside_window +
  rows_too_old.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from moesif_backfill.cli import main
from moesif_backfill.errors import PermanentDeliveryError, PreflightError
from pipeline.report import RunSummary
from tests.datasets import expected_id, expected_ids, line_id, payments_table, write_mapping
from tests.runner import run_plain, strict_settings

pytestmark = pytest.mark.integration

HEADER = "invoice_line_id,customer_id,user_id,created_at,amount,currency\n"
BAD = {3, 12}  # rows without a time: rejected


def _csv(path: Path, n: int, bad: set[int]) -> Path:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    lines = [HEADER]
    for i in range(1, n + 1):
        when = "" if i in bad else (now - dt.timedelta(minutes=i)).isoformat()
        lines.append(f"{line_id(i)},cus_{i % 7},user_{i},{when},{i}.5,USD\n")
    path.write_text("".join(lines), encoding="utf-8")
    return path


def _identity(s: RunSummary) -> bool:
    return s.accounted and s.rows_read == (
        s.actions_sent + s.rows_rejected + s.rows_skipped + s.rows_outside_window + s.rows_too_old
    )


def _rejected_rows(path: Path) -> list[int]:
    if not path.exists():
        return []
    return sorted(json.loads(x)["row"] for x in path.read_text().splitlines())


def test_rejected_rows_stay_rejected_on_rerun_until_fixed(
    tmp_path: Path, strict_firehose: Any, firehose_stream: str
) -> None:
    src = _csv(tmp_path / "r.csv", 20, BAD)
    s = strict_settings(tmp_path, [src], strict_firehose, firehose_stream, chunk_rows=5)
    rejects = tmp_path / "ckpt" / "test-job" / "rejects.ndjson"

    first, err = run_plain(s)
    assert err is None, err
    assert (first.actions_sent, first.rows_rejected, first.rows_rejected_earlier) == (18, 2, 0)
    assert first.status == "complete_with_rejects" and _identity(first)
    assert _rejected_rows(rejects) == sorted(BAD)

    again, err = run_plain(s)
    assert err is None, err
    assert again.actions_sent == 0 and again.rows_skipped == 18
    assert again.rows_rejected == again.rows_rejected_earlier == 2
    assert again.status == "complete_with_rejects" and _identity(again)
    assert _rejected_rows(rejects) == sorted(BAD)  # not written again

    # Row 12 fixed: the file is sent again, and the rejects file lists only row 3.
    _csv(src, 20, {3})
    fixed, err = run_plain(s.model_copy(update={"reprocess": [str(src)]}))
    assert err is None, err
    assert (fixed.actions_sent, fixed.rows_rejected, fixed.rows_rejected_earlier) == (19, 1, 0)
    assert _rejected_rows(rejects) == [3] and _identity(fixed)

    _csv(src, 20, set())
    clean, err = run_plain(s.model_copy(update={"reprocess": [str(src)]}))
    assert err is None and clean.status == "complete" and clean.rows_rejected == 0
    assert _rejected_rows(rejects) == [] and _identity(clean)
    # Every row went out with the transaction_id of its key, however often it was sent.
    assert set(strict_firehose.transaction_ids(firehose_stream)) == expected_ids(1, 20)


def test_resumed_file_counts_earlier_rejects_of_its_delivered_chunks(
    tmp_path: Path, strict_firehose: Any, firehose_stream: str
) -> None:
    """A run that stopped part-way: the rerun reads the delivered chunks again without sending
    them, and counts their rejected rows as rejected (by the earlier run), not as skipped."""
    src = _csv(tmp_path / "r.csv", 20, BAD)
    s = strict_settings(
        tmp_path, [src], strict_firehose, firehose_stream, chunk_rows=5, chunks_in_flight=1
    )
    strict_firehose.configure(delete_stream_after_calls=1)  # chunk 0 (row 3) only
    first, err = run_plain(s)
    assert isinstance(err, PermanentDeliveryError), err
    assert (first.actions_sent, first.rows_rejected) == (4, 1) and _identity(first)

    strict_firehose.reset_faults()
    strict_firehose.create_stream(firehose_stream)
    second, err = run_plain(s)
    assert err is None, err
    assert second.rows_read == 20 and second.rows_skipped == 4 and second.actions_sent == 14
    assert second.rows_rejected == 2 and second.rows_rejected_earlier == 1 and _identity(second)


def _cli(args: list[str]) -> int:
    return main([*args, "--quiet"])


def _common(tmp_path: Path, src: Path) -> list[str]:
    return [
        str(src),
        "--mapping",
        str(tmp_path / "m.yaml"),
        "--checkpoint",
        str(tmp_path / "ckpt"),
        "--job",
        "j",
        "--region",
        "us-east-1",
    ]


def test_exit_code_3_while_rejects_are_listed_and_dry_run_previews_everything(
    tmp_path: Path, strict_firehose: Any, firehose_stream: str
) -> None:
    src = _csv(tmp_path / "r.csv", 20, BAD)
    write_mapping(tmp_path / "m.yaml")
    common = _common(tmp_path, src)
    send = ["run", *common, "--stream", firehose_stream]
    send += ["--endpoint-url", strict_firehose.endpoint_url, "--no-prefect"]

    def dry(n: int) -> tuple[int, list[str]]:
        out = tmp_path / f"out{n}"
        code = _cli(["run", *common, "--dry-run", "--out", str(out)])
        lines = [
            line
            for f in sorted(out.glob("*.ndjson.gz"))
            for line in gzip.decompress(f.read_bytes()).decode().splitlines()
        ]
        return code, lines

    assert dry(0)[0] == 3  # a fresh preview: rejects, as `run` will have
    assert _cli(send) == 3
    assert _cli(send) == 3  # nothing sent, the rejects file still lists two rows
    code, lines = dry(1)  # after a real send: still every record a fresh send would send
    assert code == 3 and len(lines) == 18
    assert {json.loads(x)["transaction_id"] for x in lines} == {
        expected_id(i) for i in range(1, 21) if i not in BAD
    }
    assert _rejected_rows(tmp_path / "out1" / "rejects.ndjson") == sorted(BAD)

    # A changed file: `run` needs --reprocess (exit 2); with it, run and dry-run agree.
    _csv(src, 20, {3})
    assert _cli(send) == 2
    assert dry(2)[0] == _cli([*send, "--reprocess", str(src)]) == 3
    _csv(src, 20, set())
    assert dry(3)[0] == _cli([*send, "--reprocess", str(src)]) == 0
    # A file the mapping cannot read: the same error, the same exit code.
    src.write_text(HEADER.replace(",amount", "") + "il_0000001,c,u,2026-01-01,USD\n")
    assert dry(4)[0] == _cli([*send, "--reprocess", str(src)]) == 2


def _mixed(path: Path, now: dt.datetime) -> Path:
    """1,000 rows: odd positions 45 days old, even ones new, interleaved in every chunk."""
    new = payments_table(1, 500, now=now)
    old = payments_table(501, 500, now=now - dt.timedelta(days=45))
    both = pa.concat_tables([new, old])
    order = [i for pair in zip(range(500), range(500, 1000), strict=True) for i in pair]
    pq.write_table(both.take(pa.array(order)), path, row_group_size=250)
    return path


def test_skip_older_sends_the_newer_rows_and_a_later_run_sends_exactly_the_older(
    tmp_path: Path, strict_firehose: Any, firehose_stream: str
) -> None:
    src = _mixed(tmp_path / "m.parquet", dt.datetime.now(dt.UTC))
    base = strict_settings(tmp_path, [src], strict_firehose, firehose_stream, chunk_rows=100)
    skip = base.model_copy(update={"skip_older_than_30_days": True})
    allow = base.model_copy(update={"allow_older_than_30_days": True})

    first, err = run_plain(skip)
    assert err is None, err
    assert (first.actions_sent, first.rows_too_old, first.rows_read) == (500, 500, 1_000)
    assert _identity(first) and first.files_complete == 0
    assert first.job_totals["rows_too_old"] == 500
    assert set(strict_firehose.transaction_ids(firehose_stream)) == expected_ids(1, 500)

    again, err = run_plain(skip)
    assert err is None and again.actions_sent == 0
    assert (again.rows_skipped, again.rows_too_old) == (500, 500) and _identity(again)

    # Without either flag the rerun refuses, naming the pending rows and both flags.
    with pytest.raises(PreflightError, match=r"500 of them left pending.*--skip-older"):
        from pipeline.run import Run

        Run(base).prepare()

    late, err = run_plain(allow)
    assert err is None, err
    assert (late.actions_sent, late.rows_skipped, late.rows_too_old) == (500, 500, 0)
    assert _identity(late) and late.files_complete == 1
    ids = strict_firehose.transaction_ids(firehose_stream)
    assert Counter(ids).most_common(1)[0][1] == 1  # nothing sent twice
    assert set(ids) == expected_ids(1, 1_000)

    for settings in (base, allow, skip):  # nothing pending any more, whichever flag
        done, err = run_plain(settings)
        assert err is None and done.actions_sent == 0 and done.rows_skipped == 1_000
        assert done.rows_too_old == 0 and _identity(done)


def test_skip_older_counts_in_validate_and_excludes_allow(tmp_path: Path) -> None:
    src = _mixed(tmp_path / "m.parquet", dt.datetime.now(dt.UTC))
    write_mapping(tmp_path / "m.yaml")
    from tests.runner import settings_for

    s = settings_for(tmp_path, [src], mode="validate", skip_older_than_30_days=True)
    summary, err = run_plain(s)
    assert err is None, err
    assert (summary.actions_sent, summary.rows_too_old, summary.rows_older_than_30_days) == (
        500,
        500,
        500,
    )
    assert _identity(summary)
    with pytest.raises(ValidationError, match="not both"):
        settings_for(
            tmp_path,
            [src],
            mode="validate",
            skip_older_than_30_days=True,
            allow_older_than_30_days=True,
        )
    both = ["--skip-older-than-30-days", "--allow-older-than-30-days"]
    assert main(["validate", str(src), "--mapping", str(tmp_path / "m.yaml"), *both]) == 2


def test_skip_older_resumed_part_way_keeps_the_deferred_rows_pending(
    tmp_path: Path, strict_firehose: Any, firehose_stream: str
) -> None:
    """A --skip-older-than-30-days run that stopped part-way: the rerun counts the committed
    chunks' deferred rows as too old (without reading them as sendable), sends the rest."""
    src = _mixed(tmp_path / "m.parquet", dt.datetime.now(dt.UTC))
    base = strict_settings(
        tmp_path, [src], strict_firehose, firehose_stream, chunk_rows=100, chunks_in_flight=1
    )
    skip = base.model_copy(update={"skip_older_than_30_days": True})
    strict_firehose.configure(delete_stream_after_calls=3)
    first, err = run_plain(skip)
    assert isinstance(err, PermanentDeliveryError), err
    assert first.actions_sent == first.rows_too_old == 150 and _identity(first)

    strict_firehose.reset_faults()
    strict_firehose.create_stream(firehose_stream)  # empty again
    second, err = run_plain(skip)
    assert err is None, err
    assert (second.rows_skipped, second.actions_sent, second.rows_too_old) == (150, 350, 500)
    assert _identity(second)
    late, err = run_plain(base.model_copy(update={"allow_older_than_30_days": True}))
    assert err is None and late.actions_sent == 500 and _identity(late)
    ids = strict_firehose.transaction_ids(firehose_stream)
    assert sorted(ids) == sorted(expected_ids(1, 1_000) - {expected_id(i) for i in _first(150)})


def _first(n: int) -> list[int]:
    """Line numbers of the new rows among the first 2n rows of `_mixed` (sent by a first
    run that delivered n of them)."""
    return list(range(1, n + 1))


def test_checkpoint_keeps_rejects_and_deferred_rows_per_chunk_only_when_there_are_any() -> None:
    from connectors.checkpoint import FileProgress

    prog = FileProgress(identity={"size": 1}, chunk_rows=10, total_chunks=2)
    prog.mark_done(0, sent=10, rejected=0)
    stored = prog.model_dump(mode="json")
    assert not {"chunk_rejects", "deferred", "rows_outside_window"} & set(stored)  # as before
    prog.mark_done(1, sent=5, rejected=2, deferred=(123, 3))
    back = FileProgress.model_validate(json.loads(prog.model_dump_json()))
    assert back.chunk_rejects == {1: 2} and back.deferred == {1: (123, 3)}
    assert back.complete and not back.delivered and back.rows_deferred == 3
    back.settle_deferred(1, sent=2, rejected=1)
    back.settle_deferred(1, sent=2, rejected=1)  # idempotent
    assert (back.rows_sent, back.rows_rejected, back.chunk_rejects) == (17, 3, {1: 3})
    assert back.delivered and back.rows_deferred == 0


def test_skip_older_rows_are_too_old_in_the_id_ledger(
    tmp_path: Path, strict_firehose: Any, firehose_stream: str
) -> None:
    from tests.test_ledger import status_counts

    src = _mixed(tmp_path / "m.parquet", dt.datetime.now(dt.UTC))
    ledger = tmp_path / "ledger"
    s = strict_settings(
        tmp_path,
        [src],
        strict_firehose,
        firehose_stream,
        chunk_rows=100,
        ledger=str(ledger),
        skip_older_than_30_days=True,
    )
    summary, err = run_plain(s)
    assert err is None and summary.rows_too_old == 500
    assert status_counts(ledger) == {"sent": 500, "too_old": 500}
