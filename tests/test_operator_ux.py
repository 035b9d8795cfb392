"""Operating the tool (issue 12, items 5 and 6), through real CLI processes and stand-ins:

* without a terminal, progress lines at the set interval whose numbers add up to the summary;
  `--log-format json` makes every stderr line a JSON object with numeric progress fields;
* `validate` lists the first rejected rows with their reasons; `--rejects PATH` has them all;
* `status` on a partially delivered local job (text and --json), on an S3 job whose lease is
  held (moto server), and on a nightly job (its watermark); it never imports Prefect.
The Prefect-mode checks (flow run name, tags, INFO logs, typed artifact cells) are in
tests/test_operator_prefect.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.datasets import write_mapping, write_payments

CLI = [sys.executable, "-m", "moesif_backfill.cli"]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false"
    )
    env.update(extra)
    return env


def _cli(args: list[str], env: dict[str, str], *cli: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*(cli or CLI), *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )


def _send(tmp_path: Path, src: Path, stream: str, endpoint: str, job: str) -> list[str]:
    return [
        "run",
        str(src),
        *("--mapping", str(tmp_path / "m.yaml"), "--stream", stream),
        *("--endpoint-url", endpoint, "--region", "us-east-1"),
        *("--checkpoint", str(tmp_path / "ckpt"), "--job", job, "--chunk-rows", "500"),
        *("--max-in-flight", "1", "--summary-json", str(tmp_path / f"{job}.json")),
    ]


PROGRESS = re.compile(
    r"^INFO moesif_backfill\.progress: (progress|done): ([\d,]+) rows(?: of ([\d,]+) \(([\d.]+)%\))?"  # noqa: E501
    r", ([\d,]+) rows/s, (\d+)s"
)


@pytest.mark.e2e
def test_progress_lines_without_a_terminal_add_up(
    tmp_path: Path, strict_firehose: Any, firehose_stream: str
) -> None:
    src = write_payments(tmp_path / "p.parquet", 1, 6_000)
    write_mapping(tmp_path / "m.yaml")
    strict_firehose.configure(latency_s=0.25)  # 12 calls of 500 records: about 3 s
    env = _env(tmp_path, MOESIF_BACKFILL_PROGRESS_INTERVAL_S="0.5")
    done = _cli(_send(tmp_path, src, firehose_stream, strict_firehose.endpoint_url, "prog"), env)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "prog.json").read_text())
    lines = [PROGRESS.match(line) for line in done.stderr.splitlines()]
    found = [m for m in lines if m]
    assert len(found) >= 4, done.stderr  # every 0.5 s of a ~3 s send, and the last one
    counts = [int(m.group(2).replace(",", "")) for m in found]
    assert counts == sorted(counts) and counts[0] > 0
    assert found[-1].group(1) == "done" and counts[-1] == summary["rows_read"] == 6_000
    assert all(m.group(3) == "6,000" for m in found)  # the total (Parquet metadata)
    assert all(m.group(1) == "progress" for m in found[:-1])
    # the progress lines come before the summary, which follows them
    assert done.stderr.index("done: 6,000 rows") < done.stderr.index("job prog: complete")

    # --log-format json: every stderr line is a JSON object; progress numbers are numbers
    strict_firehose.configure(latency_s=0.1)
    args = _send(tmp_path, src, firehose_stream, strict_firehose.endpoint_url, "prog-json")
    done = _cli([*args, "--log-format", "json"], env)
    assert done.returncode == 0, done.stderr
    docs = [json.loads(line) for line in done.stderr.splitlines()]
    assert all({"ts", "level", "logger", "message"} <= d.keys() for d in docs)
    progress = [d for d in docs if d["logger"] == "moesif_backfill.progress"]
    assert len(progress) >= 2 and progress[-1]["final"] is True
    for d in progress:
        assert isinstance(d["rows_done"], int) and isinstance(d["rows_per_second"], float)
        assert d["rows_total"] == 6_000 and isinstance(d["percent"], float)
    assert progress[-1]["rows_done"] == 6_000 and progress[-1]["percent"] == 100.0
    assert any("job prog-json: complete" in d["message"] for d in docs)

    # --quiet: no progress lines
    done = _cli(
        [*_send(tmp_path, src, firehose_stream, strict_firehose.endpoint_url, "q"), "--quiet"], env
    )
    assert done.returncode == 0 and "moesif_backfill.progress" not in done.stderr


def _bad_csv(path: Path, n: int, bad: set[int]) -> Path:
    lines = ["invoice_line_id,customer_id,user_id,created_at,amount,currency"]
    for i in range(1, n + 1):
        when = "" if i in bad else "2026-12-01T00:00:00Z"
        lines.append(f"il_{i},c{i},u{i},{when},1.5,USD")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_validate_lists_rejected_rows_and_writes_them_all(tmp_path: Path) -> None:
    bad = {3, 7, 11, 20, 25, 31, 40, 41, 50, 60, 77, 90}
    src = _bad_csv(tmp_path / "lines.csv", 100, bad)
    write_mapping(tmp_path / "m.yaml")
    env = _env(tmp_path)
    args = ["validate", str(src), "--mapping", str(tmp_path / "m.yaml")]
    done = _cli(args, env)
    assert done.returncode == 0, done.stderr
    assert "12 would be rejected" in done.stdout
    listed = re.findall(r"^  (\S+) row (\d+): (.+)$", done.stdout, re.M)
    assert [int(r) for _f, r, _why in listed] == sorted(bad)[:10]
    assert all(f == str(src) and why == "missing time" for f, _r, why in listed)
    assert "first 10 rejected row(s)" in done.stdout and "--rejects PATH" in done.stdout

    out = tmp_path / "rejects.ndjson"
    out.write_text('{"stale": true}\n', encoding="utf-8")  # an earlier validation's: replaced
    done = _cli([*args, "--rejects", str(out)], env)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["row"] for r in rows) == sorted(bad)
    assert all(r["reason"] == "missing time" and "values" in r for r in rows)
    assert f"all 12 rejected row(s), with their values: {out}" in done.stdout


# ------------------------------------------------------------------------------ status


def _status(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    done = _cli(
        ["status", *args],
        env or _env(tmp_path),
        sys.executable,
        "-X",
        "importtime",
        "-m",
        "moesif_backfill.cli",
    )
    modules = {
        line.rsplit("|", 1)[-1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert not any(m == "prefect" or m.startswith("prefect.") for m in modules)
    err = "\n".join(x for x in done.stderr.splitlines() if not x.startswith("import time:"))
    return done.returncode, done.stdout, err


@pytest.mark.e2e
def test_status_of_a_partially_delivered_local_job(
    tmp_path: Path, strict_firehose: Any, firehose_stream: str
) -> None:
    a = write_payments(tmp_path / "in" / "a.parquet", 1, 2_000)
    write_payments(tmp_path / "in" / "b.parquet", 5_001, 3_000)
    _bad_csv(tmp_path / "in" / "c.csv", 40, {5, 6})
    write_mapping(tmp_path / "m.yaml")
    env = _env(tmp_path)
    # a.parquet, then b.parquet: the stream disappears after 5 calls (4 of a, 1 of b)
    strict_firehose.configure(delete_stream_after_calls=5)
    args = _send(tmp_path, tmp_path / "in", firehose_stream, strict_firehose.endpoint_url, "st")
    args += ["--shards-in-flight", "1"]  # one file after the other
    done = _cli([*args, "--retry-budget-s", "0"], env)
    assert done.returncode == 1, done.stderr

    code, out, err = _status(tmp_path, "--job", "st", "--checkpoint", str(tmp_path / "ckpt"))
    assert code == 0, err
    assert out.startswith("job st: not complete (1 of 3 file(s))")
    assert f"checkpoint  {tmp_path / 'ckpt'}" in out
    assert re.search(r"2,000\s+0\s+0\s+1/1\s+" + re.escape(str(a)), out)

    code, out, err = _status(
        tmp_path, "--job", "st", "--checkpoint", str(tmp_path / "ckpt"), "--json"
    )
    assert code == 0, err
    doc = json.loads(out)
    files = {Path(f["file"]).name: f for f in doc["files"]}
    assert files["a.parquet"] == {
        "file": str(a),
        "complete": True,
        "shards": 1,
        "shards_complete": 1,
        "rows_sent": 2_000,
        "rows_rejected": 0,
        "rows_outside_window": 0,
        "rows_pending": 0,
        "rows_total": 2_000,
    }
    b = files["b.parquet"]
    assert not b["complete"] and b["rows_total"] == 3_000
    assert b["rows_sent"] + b["rows_pending"] == 3_000 and b["rows_sent"] == 500
    c = files["c.csv"]
    assert c["rows_sent"] == 0 and c["rows_pending"] is None  # not known before reading
    assert doc["files_complete"] == 1 and doc["complete"] is False and doc["leases"] == []
    assert doc["nightly_watermark"] is None and doc["rows_pending"] is None

    # the rerun completes the job (c.csv's 2 bad rows rejected); status says so
    strict_firehose.configure(delete_stream_after_calls=None)
    strict_firehose.create_stream(firehose_stream)
    assert _cli(args, env).returncode == 3
    code, out, _ = _status(
        tmp_path, "--job", "st", "--checkpoint", str(tmp_path / "ckpt"), "--json"
    )
    doc = json.loads(out)
    assert doc["complete"] and doc["rows_sent"] == 2_000 + 3_000 + 38
    assert doc["rows_rejected"] == 2 and doc["rows_pending"] == 0

    code, _out, err = _status(tmp_path, "--job", "nope", "--checkpoint", str(tmp_path / "ckpt"))
    assert code == 2 and "no checkpoint of job 'nope'" in err


@pytest.mark.e2e
def test_status_of_an_s3_job_shows_the_lease_holder(tmp_path: Path, moto_firehose: Any) -> None:
    from connectors.checkpoint_s3 import S3CheckpointStore
    from connectors.checkpoint_state import JobState

    moto_firehose.ensure()
    prefix = f"s3://{moto_firehose.bucket}/status-{uuid.uuid4().hex[:8]}/"
    env = _env(
        tmp_path,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing-secret-value",
        AWS_DEFAULT_REGION=moto_firehose.region,
    )
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing-secret-value")
    store = S3CheckpointStore(
        prefix,
        endpoint_url=moto_firehose.endpoint_url,
        region=moto_firehose.region,
        lease_seconds=60,
    )
    with store.lock("s3job"):
        state = JobState.new("s3job", "f" * 16)
        store.commit(state)
        code, out, err = _status(
            tmp_path,
            "--job",
            "s3job",
            "--checkpoint",
            prefix,
            "--s3-endpoint-url",
            moto_firehose.endpoint_url,
            "--region",
            moto_firehose.region,
            env=env,
        )
        assert code == 0, err
        assert f"checkpoint  {prefix.rstrip('/')}" in out
        assert re.search(rf"lease of s3job: held by pid {os.getpid()} on host \S+ until ", out)
        assert "testing-secret-value" not in out + err
        code, out, err = _status(
            tmp_path,
            "--job",
            "s3job",
            "--checkpoint",
            prefix,
            "--json",
            "--s3-endpoint-url",
            moto_firehose.endpoint_url,
            "--region",
            moto_firehose.region,
            env=env,
        )
        (lease,) = json.loads(out)["leases"]
        assert lease["pid"] == os.getpid() and lease["job"] == "s3job"
    code, out, err = _status(
        tmp_path,
        "--job",
        "s3job",
        "--checkpoint",
        prefix,
        "--json",
        "--s3-endpoint-url",
        moto_firehose.endpoint_url,
        "--region",
        moto_firehose.region,
        env=env,
    )
    assert code == 0 and json.loads(out)["leases"] == []  # released


def test_status_of_a_nightly_job_shows_its_watermark(tmp_path: Path) -> None:
    import datetime as dt

    from connectors.checkpoint_local import LocalCheckpointStore
    from pipeline.nightly_state import Watermark, save_watermark

    store = LocalCheckpointStore(tmp_path / "ckpt")
    mark = Watermark.first("nightly-usage", dt.date(2026, 11, 1), "Europe/Berlin", "path")
    with store.lock("nightly-usage"):
        save_watermark(store, mark.advanced(dt.date(2026, 12, 4)))
    code, out, err = _status(
        tmp_path, "--job", "nightly-usage", "--checkpoint", str(tmp_path / "ckpt")
    )
    assert code == 0, err
    assert "nightly watermark: last synced day 2026-12-04 (since 2026-11-01, Europe/Berlin" in out
    code, out, err = _status(
        tmp_path, "--job", "nightly-usage", "--checkpoint", str(tmp_path / "ckpt"), "--json"
    )
    wm = json.loads(out)["nightly_watermark"]
    assert wm["last_synced_day"] == "2026-12-04" and wm["timezone"] == "Europe/Berlin"


@pytest.mark.e2e
def test_bar_on_a_terminal_starts_at_once_and_ends_at_the_summary_rows(
    tmp_path: Path, strict_firehose: Any, firehose_stream: str
) -> None:
    import pty
    import threading

    src = write_payments(tmp_path / "p.parquet", 1, 3_000)
    write_mapping(tmp_path / "m.yaml")
    strict_firehose.configure(latency_s=0.1)
    master, slave = pty.openpty()
    args = _send(tmp_path, src, firehose_stream, strict_firehose.endpoint_url, "bar")
    env = _env(tmp_path, COLUMNS="120", TERM="xterm")
    proc = subprocess.Popen([*CLI, *args], env=env, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert proc.wait(timeout=300) == 0
    reader.join(timeout=10)
    os.close(master)
    err = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode(errors="replace"))
    summary = json.loads((tmp_path / "bar.json").read_text())
    assert "0/?" in err  # drawn before planning knew the total: indeterminate
    last = err.rindex("3000/3000")  # the last frame: the rows the summary has
    assert summary["rows_read"] == 3_000 and last < err.index("job bar: complete")
    assert "moesif_backfill.progress" not in err  # a terminal gets the bar, not log lines


@pytest.mark.e2e
def test_range_without_a_terminal_prints_progress_of_every_day(
    tmp_path: Path, strict_firehose: Any, firehose_stream: str
) -> None:
    import datetime as dt

    from tests.test_nightly import day_start, partition, recent_day, write_day

    days = [recent_day(5) + dt.timedelta(days=i) for i in range(2)]
    for i, day in enumerate(days):
        write_day(partition(tmp_path / "usage", day), day, day_start(i), 1_000)
    write_mapping(tmp_path / "mapping.yaml")
    strict_firehose.configure(latency_s=0.2)
    env = _env(tmp_path, MOESIF_BACKFILL_PROGRESS_INTERVAL_S="0.3")
    args = [
        "range",
        str(tmp_path / "usage" / "dt={date:%Y-%m-%d}"),
        *("--mapping", str(tmp_path / "mapping.yaml"), "--job", "days"),
        *("--stream", firehose_stream, "--start", days[0].isoformat()),
        *("--end", days[1].isoformat(), "--checkpoint", str(tmp_path / "ckpt")),
        *("--endpoint-url", strict_firehose.endpoint_url, "--region", "us-east-1"),
        *("--chunk-rows", "100", "--concurrency", "1", "--max-in-flight", "1"),
        "--no-prefect",
    ]
    done = _cli(args, env)
    assert done.returncode == 0, done.stderr
    found = [m for m in map(PROGRESS.match, done.stderr.splitlines()) if m]
    assert len(found) >= 3, done.stderr
    assert found[-1].group(1) == "done" and found[-1].group(2) == "2,000"


def test_progress_log_interval_fields_and_json_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import time

    from moesif_backfill import cli
    from moesif_backfill.cli_flags import apply_env
    from moesif_backfill.cli_progress import PROGRESS_EVERY_S, JsonLines, ProgressLog, json_logs
    from moesif_backfill.errors import ConfigError

    parse = cli.build_parser().parse_args
    args = parse(["run", "x.csv", "--mapping", "m.yaml", "--stream", "s"])
    assert PROGRESS_EVERY_S == 15.0 and not hasattr(args, "progress_interval_s")
    env = {"MOESIF_BACKFILL_PROGRESS_INTERVAL_S": "0.05", "MOESIF_BACKFILL_LOG_FORMAT": "json"}
    assert json_logs(args) is False
    monkeypatch.setenv("MOESIF_BACKFILL_LOG_FORMAT", "json")
    assert json_logs(args) is True  # from the start, before apply_env
    apply_env(args, env)
    assert args.progress_interval_s == 0.05 and args.log_format == "json"
    args = parse(["run", "x.csv", "--mapping", "m", "--stream", "s", "--log-format", "text"])
    assert json_logs(args) is False  # the command line wins
    with pytest.raises(ConfigError, match="MOESIF_BACKFILL_PROGRESS_INTERVAL_S"):
        apply_env(
            parse(["validate", "x.csv", "--mapping", "m"]),
            {"MOESIF_BACKFILL_PROGRESS_INTERVAL_S": "0"},
        )

    out = io.StringIO()
    log = ProgressLog(interval=0.05, stream=JsonLines(out))
    log.set_total(100)
    log.rows_done(40)
    time.sleep(0.3)  # one line for the 40 rows; none while no rows move
    log.rows_done(60)
    log.stop()
    docs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [d["rows_done"] for d in docs] == [40, 100]
    assert docs[0]["percent"] == 40.0 and docs[0]["eta_s"] is not None
    assert docs[-1]["final"] is True and docs[-1]["percent"] == 100.0
    assert all(isinstance(d["rows_per_second"], float) for d in docs)
    wrapped = io.StringIO()
    lines = JsonLines(wrapped)
    lines.write("error: something\nplain")
    lines.flush()
    a, b = (json.loads(x) for x in wrapped.getvalue().splitlines())
    assert (a["level"], a["message"], b["level"]) == ("ERROR", "error: something", "INFO")
