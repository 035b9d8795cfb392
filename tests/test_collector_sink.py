"""`run --sink moesif` end to end against the Collector stand-in over real HTTP on 127.0.0.1:
exact delivery, retries, 413 splitting and refusal, 401 before/after a commit, the application
id never written anywhere, reruns. The CLI runs in this process (`main`), once as a process."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from moesif_backfill.cli import main
from pipeline.day_settings import RangeSettings
from tests.datasets import expected_id, expected_ids, payments_table, write_mapping, write_payments
from tests.runner import file_progress
from tests.standins.collector import CollectorStandin

pytestmark = pytest.mark.integration

APP_ID = "APPID-distinctive-5e1f0c9a-7d21"


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch) -> Iterator[CollectorStandin]:
    monkeypatch.setenv("MOESIF_APPLICATION_ID", APP_ID)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    for name in [k for k in os.environ if k.startswith("MOESIF_BACKFILL_")]:
        monkeypatch.delenv(name)
    with CollectorStandin(APP_ID) as standin:
        yield standin


def args(tmp_path: Path, src: Path, collector: CollectorStandin, *extra: str) -> list[str]:
    return [
        "run",
        str(src),
        *("--mapping", str(write_mapping(tmp_path / "m.yaml"))),
        *("--sink", "moesif", "--moesif-url", collector.url),
        *("--checkpoint", str(tmp_path / "ckpt"), "--job", "j"),
        *("--summary-json", str(tmp_path / "summary.json")),
        *("--retry-attempts", "8", "--quiet", "--no-prefect"),
        *extra,
    ]


def summary(tmp_path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((tmp_path / "summary.json").read_text())
    return doc


def no_app_id_anywhere(tmp_path: Path, *texts: str) -> None:
    """Not in the output, nor in any file the runs wrote (checkpoint, rejects, summary,
    ledger, dry-run files)."""
    needle = APP_ID.encode()
    for text in texts:
        assert APP_ID not in text
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files
    for path in files:
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
        assert needle not in data, path


def dry_run_ids(tmp_path: Path, src: Path) -> list[str]:
    out = tmp_path / "preview"
    code = main(
        [
            "run",
            str(src),
            *("--mapping", str(write_mapping(tmp_path / "m.yaml"))),
            *("--sink", "moesif", "--dry-run", "--out", str(out), "--quiet"),
        ]
    )
    assert code == 0
    lines = [
        line
        for f in sorted(out.glob("*.ndjson.gz"))
        for line in gzip.decompress(f.read_bytes()).splitlines()
    ]
    return [json.loads(line)["transaction_id"] for line in lines]


def test_exact_delivery_then_rerun_sends_nothing(
    tmp_path: Path, collector: CollectorStandin, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_payments(tmp_path / "p.parquet", 1, 2_500)
    preview = dry_run_ids(tmp_path, src)
    assert sorted(preview) == sorted(expected_ids(1, 2_500))
    extra = ("--chunk-rows", "500", "--moesif-batch-max-bytes", "40000")
    assert main(args(tmp_path, src, collector, *extra)) == 0
    delivered = collector.delivered_ids()
    assert len(delivered) == len(set(delivered)) == 2_500  # no duplicates
    assert set(delivered) == set(preview)
    first = summary(tmp_path)
    assert (first["sink"], first["actions_sent"], first["rows_rejected"]) == ("moesif", 2_500, 0)
    assert first["calls"] == len(collector.request_log()) == collector.stats()["accepted_requests"]
    assert first["calls"] > 5  # several batches per chunk
    assert first["bytes_sent"] == sum(e["body_bytes"] for e in collector.request_log())
    assert first["accounted"]
    # the values are sacred: what arrived is what the dry run wrote
    # (byte for byte: each body is exactly the dry run's lines of its actions, as an array)
    previewed = {
        json.loads(line)["transaction_id"]: line
        for f in (tmp_path / "preview").glob("*.gz")
        for line in gzip.decompress(f.read_bytes()).splitlines()
    }
    for body in collector.bodies():
        ids = [a["transaction_id"] for a in json.loads(body)]
        assert body == b"[" + b",".join(previewed[i] for i in ids) + b"]"
    calls = len(collector.request_log())
    assert main(args(tmp_path, src, collector, *extra)) == 0
    second = summary(tmp_path)
    assert (second["actions_sent"], second["rows_skipped"]) == (0, 2_500)
    assert len(collector.request_log()) == calls
    out = capsys.readouterr()
    assert "moesif calls" in out.out + out.err
    no_app_id_anywhere(tmp_path, out.out, out.err)


def test_throttling_server_errors_and_dropped_connections_are_retried(
    tmp_path: Path, collector: CollectorStandin
) -> None:
    src = write_payments(tmp_path / "p.parquet", 1, 1_200)
    collector.fail_next(429, 503, "drop", 500, 429, retry_after=0)
    assert main(args(tmp_path, src, collector, "--chunk-rows", "300")) == 0
    delivered = collector.delivered_ids()
    assert len(delivered) == len(set(delivered)) and set(delivered) == expected_ids(1, 1_200)
    s = summary(tmp_path)
    assert (s["throttled_calls"], s["server_errors"], s["connection_errors"]) == (2, 2, 1)
    assert s["actions_sent"] == 1_200 and s["records_retried"] > 0
    assert collector.stats()["statuses"] == {"201": 4, "429": 2, "503": 1, "500": 1, "dropped": 1}


def test_413_over_a_size_splits_and_delivers_everything(
    tmp_path: Path, collector: CollectorStandin
) -> None:
    src = write_payments(tmp_path / "p.parquet", 1, 1_000)
    collector.too_large_over(30_000)
    assert main(args(tmp_path, src, collector, "--chunk-rows", "500")) == 0
    delivered = collector.delivered_ids()
    assert len(delivered) == len(set(delivered)) and set(delivered) == expected_ids(1, 1_000)
    assert collector.stats()["statuses"]["413"] >= 2
    assert all(e["body_bytes"] <= 30_000 for e in collector.request_log() if e["status"] == 201)
    s = summary(tmp_path)
    assert (s["actions_sent"], s["rows_rejected"], s["records_refused"]) == (1_000, 0, 0)


def big_row_file(path: Path, n: int, big: int) -> Path:
    """`n` payment rows (ids 1..n); row `big` has a 3,000-character currency."""
    table = payments_table(1, n, now=dt.datetime.now(dt.UTC))
    currency = table.column("currency").to_pylist()
    currency[big - 1] = "X" * 3_000
    table = table.set_column(
        table.schema.get_field_index("currency"), "currency", pa.array(currency)
    )
    pq.write_table(table, path)
    return path


def test_one_action_answered_413_alone_is_rejected(
    tmp_path: Path, collector: CollectorStandin, capsys: pytest.CaptureFixture[str]
) -> None:
    src = big_row_file(tmp_path / "p.parquet", 200, big=77)
    collector.too_large_over(2_500)
    ledger = tmp_path / "ledger"
    extra = ("--chunk-rows", "50", "--ledger", str(ledger))
    assert main(args(tmp_path, src, collector, *extra)) == 3
    delivered = collector.delivered_ids()
    assert len(delivered) == len(set(delivered))
    assert set(delivered) == expected_ids(1, 200) - {expected_id(77)}
    s = summary(tmp_path)
    assert (s["actions_sent"], s["rows_rejected"], s["records_refused"]) == (199, 1, 1)
    assert s["status"] == "complete_with_rejects" and s["accounted"]
    rejects = [json.loads(x) for x in Path(s["rejects_path"]).read_text().splitlines()]
    assert [(r["source"], r["row"]) for r in rejects] == [(str(src.resolve()), 77)]
    assert "413" in rejects[0]["reason"] and rejects[0]["values"]["invoice_line_id"] == "il_0000077"
    prog = file_progress(tmp_path / "ckpt", "j", src)
    assert prog is not None and (prog.rows_sent, prog.rows_rejected) == (199, 1)
    assert prog.chunk_rejects == {1: 1}
    rows = pq.read_table(ledger).to_pylist()
    assert len(rows) == 200
    status = {r["row"]: (r["status"], r["reason"]) for r in rows}
    assert status[77][0] == "rejected" and "413" in status[77][1]
    assert sum(st == "sent" for st, _ in status.values()) == 199
    # the rerun sends nothing and still says the row is rejected
    calls = len(collector.request_log())
    assert main(args(tmp_path, src, collector, *extra)) == 3
    again = summary(tmp_path)
    assert (again["rows_skipped"], again["rows_rejected"], again["rows_rejected_earlier"]) == (
        199,
        1,
        1,
    )
    assert len(collector.request_log()) == calls
    out = capsys.readouterr()
    no_app_id_anywhere(tmp_path, out.out, out.err)


def test_an_action_over_the_limit_is_rejected_before_sending(
    tmp_path: Path, collector: CollectorStandin
) -> None:
    src = big_row_file(tmp_path / "p.parquet", 20, big=5)
    extra = ("--moesif-action-max-bytes", "2000")
    assert main(args(tmp_path, src, collector, *extra)) == 3
    assert set(collector.delivered_ids()) == expected_ids(1, 20) - {expected_id(5)}
    assert all(e["status"] == 201 for e in collector.request_log())  # never sent, so no 413
    rejects = Path(summary(tmp_path)["rejects_path"]).read_text().splitlines()
    assert [json.loads(x)["reason"] for x in rejects] == ["action over 2,000 bytes"]


def test_validate_with_sink_moesif_rejects_what_the_collector_would_refuse(
    tmp_path: Path, collector: CollectorStandin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """validate --sink moesif applies the per-action limit; it needs no application id and
    sends nothing."""
    monkeypatch.delenv("MOESIF_APPLICATION_ID")
    src = big_row_file(tmp_path / "p.parquet", 20, big=5)
    base = ["validate", str(src), "--mapping", str(write_mapping(tmp_path / "m.yaml"))]
    rejects = tmp_path / "rejects.ndjson"
    limit = ("--moesif-action-max-bytes", "2000", "--rejects", str(rejects))
    assert main([*base, "--sink", "moesif", *limit]) == 0  # validate reports rejects
    assert [json.loads(x)["row"] for x in rejects.read_text().splitlines()] == [5]
    assert main([*base, *limit]) == 0  # the Firehose path's limit is the record's, not this
    assert not rejects.exists() or rejects.read_text() == ""
    assert collector.request_log() == []


def test_401_before_any_commit_exits_2_with_nothing_committed(
    tmp_path: Path, collector: CollectorStandin, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_payments(tmp_path / "p.parquet", 1, 1_000)
    collector.fail_from(0, 401)
    assert main(args(tmp_path, src, collector, "--chunk-rows", "250")) == 2
    err = capsys.readouterr().err
    assert "Moesif refused the application id (401)" in err
    assert collector.stats()["accepted_requests"] == 0 and collector.delivered_ids() == []
    prog = file_progress(tmp_path / "ckpt", "j", src)
    assert prog is None or (prog.rows_sent, prog.done) == (0, [])
    s = summary(tmp_path)
    assert (s["status"], s["actions_sent"], s["chunks_committed"]) == ("failed", 0, 0)
    assert s["error_type"] == "DestinationRefusedError"


def test_401_after_commits_exits_1_and_the_checkpoint_holds_what_arrived(
    tmp_path: Path, collector: CollectorStandin, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_payments(tmp_path / "p.parquet", 1, 3_000)
    collector.fail_from(2, 401)  # the third POST on: 401
    extra = ("--chunk-rows", "500", "--max-in-flight", "1")
    assert main(args(tmp_path, src, collector, *extra)) == 1
    assert "Moesif refused the application id (401)" in capsys.readouterr().err
    prog = file_progress(tmp_path / "ckpt", "j", src)
    assert prog is not None and prog.rows_sent == 1_000
    assert set(collector.delivered_ids()) == expected_ids(1, 1_000)
    assert summary(tmp_path)["chunks_committed"] == 2


def test_a_wrong_application_id_never_shows(
    tmp_path: Path, collector: CollectorStandin, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    src = write_payments(tmp_path / "p.parquet", 1, 100)
    monkeypatch.setenv("MOESIF_APPLICATION_ID", "APPID-wrong-one-99c1")
    assert main(args(tmp_path, src, collector)) == 2
    out = capsys.readouterr()
    assert "APPID-wrong-one-99c1" not in out.out + out.err
    for path in (p for p in tmp_path.rglob("*") if p.is_file()):
        assert b"APPID-wrong-one-99c1" not in path.read_bytes()


def test_missing_application_id_is_a_config_error_before_reading(
    tmp_path: Path, collector: CollectorStandin, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    src = write_payments(tmp_path / "p.parquet", 1, 100)
    monkeypatch.delenv("MOESIF_APPLICATION_ID")
    assert main(args(tmp_path, src, collector)) == 2
    err = capsys.readouterr().err
    assert "MOESIF_APPLICATION_ID" in err and "--moesif-app-id-block" in err
    assert collector.request_log() == []
    assert not (tmp_path / "ckpt").exists()  # not even the checkpoint was opened


def test_stream_and_sink_settings() -> None:
    common = {"sources": ["x/{date:%Y-%m-%d}/"], "mapping": "m.yaml", "job": "j"}
    day = RangeSettings.model_validate({**common, "sink": "moesif", "moesif_url": "http://h:1/"})
    run = day.settings_for(dt.date(2026, 11, 2), Path("s.json"))
    assert (run.sink, run.moesif_url, run.streams) == ("moesif", "http://h:1", [])
    with pytest.raises(ValueError, match="--stream NAME"):
        RangeSettings.model_validate(common)
    with pytest.raises(ValueError, match="--stream is for --sink firehose"):
        RangeSettings.model_validate({**common, "sink": "moesif", "streams": ["s"]})


def test_cli_process_end_to_end(tmp_path: Path, collector: CollectorStandin) -> None:
    """The `moesif-backfill` command as a process, configured by environment variables."""
    src = write_payments(tmp_path / "p.parquet", 1, 1_500)
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)
    env.update(
        MOESIF_BACKFILL_SINK="moesif",
        MOESIF_BACKFILL_MOESIF_URL=collector.url,
        MOESIF_BACKFILL_CHUNK_ROWS="400",
    )
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "moesif_backfill.cli", "run", str(src)),
            *("--mapping", str(write_mapping(tmp_path / "m.yaml"))),
            *("--checkpoint", str(tmp_path / "ckpt"), "--job", "e2e"),
            *("--summary-json", str(tmp_path / "summary.json"), "--quiet", "--no-prefect"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    delivered = collector.delivered_ids()
    assert len(delivered) == len(set(delivered)) and set(delivered) == expected_ids(1, 1_500)
    assert summary(tmp_path)["sink"] == "moesif"
    no_app_id_anywhere(tmp_path, proc.stdout, proc.stderr)


def test_range_days_send_to_the_collector(tmp_path: Path, collector: CollectorStandin) -> None:
    for offset, day in enumerate(("2026-11-01", "2026-11-02")):
        write_payments(tmp_path / "exports" / f"dt={day}" / "p.parquet", offset * 1_000 + 1, 300)
    code = main(
        [
            "range",
            str(tmp_path / "exports" / "dt={date:%Y-%m-%d}") + "/",
            *("--mapping", str(write_mapping(tmp_path / "m.yaml")), "--job", "days"),
            *("--sink", "moesif", "--moesif-url", collector.url),
            *("--checkpoint", str(tmp_path / "ckpt"), "--start", "2026-11-01"),
            *("--end", "2026-11-02", "--summary-json", str(tmp_path / "days.json")),
            "--no-prefect",
        ]
    )
    assert code == 0
    delivered = collector.delivered_ids()
    assert len(delivered) == len(set(delivered))
    assert set(delivered) == expected_ids(1, 300) | expected_ids(1_001, 300)
    result = json.loads((tmp_path / "days.json").read_text())
    assert [d["sent"] for d in result["days"]] == [300, 300]
    no_app_id_anywhere(tmp_path)


@pytest.mark.e2e
def test_prefect_mode_and_secret_block_never_show_the_id(
    tmp_path: Path, collector: CollectorStandin, prefect_api: str
) -> None:
    """As a Prefect flow run (the id from the environment), then directly with the id from a
    Prefect Secret block: delivered, and the id is in no flow run parameter, log or artifact.
    Each run is a process of its own (Prefect's logging set up in this one would reach the
    other tests of the session)."""
    import asyncio

    from prefect.blocks.system import Secret

    from tests.test_secrets import _prefect_text

    def cli(argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
        base = dict(os.environ, PREFECT_API_URL=prefect_api, PREFECT_LOGGING_LEVEL="INFO")
        if "MOESIF_APPLICATION_ID" in env and not env["MOESIF_APPLICATION_ID"]:
            base.pop("MOESIF_APPLICATION_ID")
            env = {}
        return subprocess.run(
            [sys.executable, "-m", "moesif_backfill.cli", *argv],
            env={**base, **env},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    src = write_payments(tmp_path / "p.parquet", 1, 600)
    flow = cli([*args(tmp_path, src, collector)[:-1], "--prefect"])
    assert flow.returncode == 0, flow.stderr
    assert "as Prefect flow run" in flow.stderr + flow.stdout
    assert set(collector.delivered_ids()) == expected_ids(1, 600)

    Secret(value=APP_ID).save("moesif-app-id-test", overwrite=True)
    other = write_payments(tmp_path / "q.parquet", 1_001, 200)
    extra = ["--moesif-app-id-block", "moesif-app-id-test", "--job", "from-block"]
    block = cli([*args(tmp_path, other, collector), *extra], MOESIF_APPLICATION_ID="")
    assert block.returncode == 0, block.stderr
    assert set(collector.delivered_ids()) == expected_ids(1, 600) | expected_ids(1_001, 200)
    extra[1] = "nope"
    missing = cli([*args(tmp_path, other, collector), *extra], MOESIF_APPLICATION_ID="")
    assert missing.returncode == 2 and "no Prefect Secret block named 'nope'" in missing.stderr

    assert APP_ID not in asyncio.run(_prefect_text())
    outputs = [p.stdout + p.stderr for p in (flow, block, missing)]
    no_app_id_anywhere(tmp_path, *outputs)


def test_a_lost_collector_fails_the_run_as_stalled(
    tmp_path: Path, collector: CollectorStandin, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_payments(tmp_path / "p.parquet", 1, 300)
    url = collector.url
    argv = args(tmp_path, src, collector, "--stall-timeout-s", "1")
    argv[argv.index("--retry-attempts") + 1] = "1000"
    collector.stop()  # connections refused from now on
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "acknowledged nothing" in err and url in err
    s = summary(tmp_path)
    assert (s["error_type"], s["chunks_committed"]) == ("DeliveryStalledError", 0)
    assert s["connection_errors"] >= 1


def test_records_per_second_shape_the_actions(tmp_path: Path, collector: CollectorStandin) -> None:
    src = write_payments(tmp_path / "p.parquet", 1, 1_000)
    extra = ("--chunk-rows", "100", "--max-records-per-second", "2000", "--max-in-flight", "2")
    assert main(args(tmp_path, src, collector, *extra)) == 0
    s = summary(tmp_path)
    assert s["actions_sent"] == 1_000 and s["expected_send_s"] == 0.5
    # shaped to 98% of 2,000/s, each call waiting for its actions (no burst at the start):
    # 1,000 actions take about 0.51 s
    assert s["duration_s"] >= 0.45
    assert set(collector.delivered_ids()) == expected_ids(1, 1_000)


@pytest.mark.e2e
def test_dask_workers_resolve_the_id_themselves(
    tmp_path: Path, collector: CollectorStandin
) -> None:
    srcs = [write_payments(tmp_path / "in" / f"p{i}.parquet", i * 1_000 + 1, 400) for i in range(3)]
    assert main(args(tmp_path, srcs[0].parent, collector, "--workers", "2")) == 0
    delivered = collector.delivered_ids()
    assert len(delivered) == len(set(delivered))
    assert set(delivered) == set().union(*(expected_ids(i * 1_000 + 1, 400) for i in range(3)))
    s = summary(tmp_path)
    assert (s["sink"], s["actions_sent"]) == ("moesif", 1_200)
    assert s["calls"] == collector.stats()["accepted_requests"]
