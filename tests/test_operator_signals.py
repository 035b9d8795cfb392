"""Operating the CLI (issue 12, items 1, 2 and 8), through a real `moesif-backfill` process:

* Ctrl-C (SIGINT to the process group, as a terminal sends it) and SIGTERM mid-send, with and
  without a real Prefect server: exit 130/143 within 5 s, one "interrupted" line and no
  traceback; the Prefect flow run ends Cancelled; a rerun resumes and nothing is lost. A second
  Ctrl-C leaves within 1 s.
* An error is printed once (`error: ...`), in both modes, without a traceback.
* An endpoint lost mid-send (the strict Firehose stand-in stopped; a proxy that goes silent)
  ends the run with exit 1 within 75 s and a short stderr.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.blackhole import BlackholeProxy
from tests.datasets import expected_ids, write_mapping, write_payments
from tests.standins.strict_firehose import StrictFirehose

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-m", "moesif_backfill.cli"]
ROWS = 20_000
CHUNK_ROWS = 500
CHUNKS_IN_FLIGHT = 4  # RunSettings.chunks_in_flight's default


def _env(prefect_api: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)
    if prefect_api:
        env["PREFECT_API_URL"] = prefect_api
    return env


def _args(tmp_path: Path, endpoint: str, stream: str, *extra: str) -> list[str]:
    return [
        *CLI,
        "run",
        str(tmp_path / "p.parquet"),
        "--mapping",
        str(tmp_path / "m.yaml"),
        "--stream",
        stream,
        "--endpoint-url",
        endpoint,
        "--region",
        "us-east-1",
        "--checkpoint",
        str(tmp_path / "ckpt"),
        "--job",
        f"sig-{tmp_path.name}"[:60],
        "--chunk-rows",
        str(CHUNK_ROWS),
        "--max-records-per-second",
        "2500",  # ~8 s for the file: time to catch it mid-send
        "--quiet",
        *extra,
    ]


def _data(tmp_path: Path) -> None:
    write_payments(tmp_path / "p.parquet", 1, ROWS)
    write_mapping(tmp_path / "m.yaml")


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )


def _wait_records(server: StrictFirehose, stream: str, n: int, proc: Any) -> None:
    deadline = time.monotonic() + 120
    while len(server.records(stream)) < n:
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline, "the run did not send in time"
        time.sleep(0.02)


def _finish(proc: subprocess.Popen[bytes], since: float) -> tuple[int, str, float]:
    _out, err = proc.communicate(timeout=120)
    return proc.returncode, err.decode(), time.monotonic() - since


def _assert_one_interrupted_line(err: str) -> None:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len([x for x in lines if "interrupted" in x]) == 1, err
    assert "rerun to resume" in err
    assert len(lines) <= 3, err  # the line, and at most a warning or two of the run


def _rerun_and_check(
    tmp_path: Path, server: StrictFirehose, stream: str, env: dict[str, str], interrupts: int
) -> None:
    args = _args(tmp_path, server.endpoint_url, stream)
    done = subprocess.run(args, env=env, capture_output=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    delivered = server.transaction_ids(stream)
    assert set(delivered) == expected_ids(1, ROWS)
    dupes = sum(c - 1 for c in Counter(delivered).values())
    assert dupes <= interrupts * CHUNKS_IN_FLIGHT * CHUNK_ROWS


def _error_lines(err: str) -> int:
    return sum(line.startswith("error:") for line in err.splitlines())


def _flow_run_states(api: str, job: str, *, prefix: bool = False) -> list[str]:
    """The state types of the flow runs of `job` (prefix: of its days' jobs, `job`-DAY)."""
    request = urllib.request.Request(
        f"{api}/flow_runs/filter",
        data=json.dumps({"limit": 50, "sort": "START_TIME_DESC"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        runs = json.loads(r.read())
    jobs = [((r.get("parameters") or {}).get("settings") or {}).get("job") for r in runs]
    return [
        str(run["state_type"])
        for run, name in zip(runs, jobs, strict=True)
        if isinstance(name, str) and (name.startswith(f"{job}-") if prefix else name == job)
    ]


@pytest.mark.parametrize("with_prefect", [False, True], ids=["direct", "prefect"])
def test_sigint_mid_send_exits_130_and_rerun_resumes(
    tmp_path: Path,
    strict_firehose: StrictFirehose,
    firehose_stream: str,
    with_prefect: bool,
    request: pytest.FixtureRequest,
) -> None:
    api = request.getfixturevalue("prefect_server").api_url if with_prefect else None
    env = _env(api)
    _data(tmp_path)
    mode = "--prefect" if with_prefect else "--no-prefect"
    proc = _start(_args(tmp_path, strict_firehose.endpoint_url, firehose_stream, mode), env)
    _wait_records(strict_firehose, firehose_stream, 3_000, proc)
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    code, err, took = _finish(proc, sent)
    assert code == 130, err
    assert took < 5.0, (took, err)
    _assert_one_interrupted_line(err)
    assert len(strict_firehose.records(firehose_stream)) < ROWS  # it did stop early
    if api is not None:
        job = f"sig-{tmp_path.name}"[:60]
        assert _flow_run_states(api, job) == ["CANCELLED"]
    _rerun_and_check(tmp_path, strict_firehose, firehose_stream, env, interrupts=1)


def test_sigterm_mid_send_exits_143(
    tmp_path: Path, strict_firehose: StrictFirehose, firehose_stream: str
) -> None:
    env = _env(None)
    _data(tmp_path)
    proc = _start(_args(tmp_path, strict_firehose.endpoint_url, firehose_stream), env)
    _wait_records(strict_firehose, firehose_stream, 3_000, proc)
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)
    code, err, took = _finish(proc, sent)
    assert code == 143, err
    assert took < 5.0, (took, err)
    _assert_one_interrupted_line(err)
    _rerun_and_check(tmp_path, strict_firehose, firehose_stream, env, interrupts=1)


def test_second_sigint_exits_within_a_second(
    tmp_path: Path, strict_firehose: StrictFirehose, firehose_stream: str
) -> None:
    env = _env(None)
    _data(tmp_path)
    proc = _start(_args(tmp_path, strict_firehose.endpoint_url, firehose_stream), env)
    _wait_records(strict_firehose, firehose_stream, 3_000, proc)
    strict_firehose.configure(latency_s=2.5)  # the calls in flight now take a while
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.3)
    second = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    code, err, took = _finish(proc, second)
    assert code == 130, err
    assert took < 1.0, (took, err)
    _assert_one_interrupted_line(err)
    strict_firehose.reset_faults()
    _rerun_and_check(tmp_path, strict_firehose, firehose_stream, env, interrupts=1)


@pytest.mark.parametrize("with_prefect", [False, True], ids=["direct", "prefect"])
def test_an_error_is_printed_once(
    tmp_path: Path,
    strict_firehose: StrictFirehose,
    firehose_stream: str,
    with_prefect: bool,
    request: pytest.FixtureRequest,
) -> None:
    api = request.getfixturevalue("prefect_server").api_url if with_prefect else None
    env = _env(api)
    _data(tmp_path)
    (tmp_path / "bad.yaml").write_text("a: [unclosed\n  b: 1\n", encoding="utf-8")
    mode = "--prefect" if with_prefect else "--no-prefect"
    base = _args(tmp_path, strict_firehose.endpoint_url, firehose_stream, mode)
    bad_yaml = [*base]
    bad_yaml[bad_yaml.index("--mapping") + 1] = str(tmp_path / "bad.yaml")
    unknown = [*base]
    unknown[unknown.index("--stream") + 1] = "no-such-stream"
    for args, words, code in ((bad_yaml, "not valid YAML", 2), (unknown, "does not exist", 2)):
        done = subprocess.run(args, env=env, capture_output=True, timeout=300, check=False)
        err = done.stderr.decode()
        assert done.returncode == code, err
        assert "Traceback" not in err, err
        assert _error_lines(err) == 1, err
        assert err.count(words) == 1, err
        assert not [line for line in err.splitlines() if line.startswith(("ERROR", "WARNING"))]
    with_debug = subprocess.run(
        [*bad_yaml, "--debug"], env=env, capture_output=True, timeout=300, check=False
    )
    assert "Traceback" in with_debug.stderr.decode()
    assert _error_lines(with_debug.stderr.decode()) == 1


def _lost_endpoint_run(
    tmp_path: Path, endpoint: str, stream: str, server: StrictFirehose, lose: Any
) -> None:
    _data(tmp_path)
    proc = _start(_args(tmp_path, endpoint, stream, "--no-prefect"), _env(None))
    _wait_records(server, stream, 3_000, proc)
    lost = time.monotonic()
    lose()
    code, err, took = _finish(proc, lost)
    assert code == 1, err
    assert took < 75.0, (took, err)
    assert "Traceback" not in err, err
    assert _error_lines(err) == 1, err
    assert "acknowledged nothing" in err, err
    assert len(err.splitlines()) <= 16, err  # one warning, the error, the summary
    assert err.count("WARNING") <= 2, err
    print(f"endpoint lost: exit {code} after {took:.1f}s, {len(err.splitlines())} stderr lines")


def test_endpoint_stopped_mid_send_fails_within_75_s(tmp_path: Path) -> None:
    with StrictFirehose(seed=0) as server:
        server.create_stream("lost")
        _lost_endpoint_run(tmp_path, server.endpoint_url, "lost", server, server.stop)


def test_endpoint_silent_mid_send_fails_within_75_s(
    tmp_path: Path, strict_firehose: StrictFirehose, firehose_stream: str
) -> None:
    with BlackholeProxy(strict_firehose.endpoint_url) as proxy:
        _lost_endpoint_run(
            tmp_path, proxy.endpoint_url, firehose_stream, strict_firehose, proxy.drop
        )


@pytest.mark.parametrize("with_prefect", [False, True], ids=["direct", "prefect"])
def test_sigint_mid_range_exits_130_and_rerun_completes(
    tmp_path: Path,
    strict_firehose: StrictFirehose,
    firehose_stream: str,
    with_prefect: bool,
    request: pytest.FixtureRequest,
) -> None:
    from tests.test_nightly import day_start, partition, recent_day, write_day

    api = request.getfixturevalue("prefect_server").api_url if with_prefect else None
    env = _env(api)
    days = [recent_day(10) + dt.timedelta(days=i) for i in range(4)]
    for i, day in enumerate(days):
        write_day(partition(tmp_path / "usage", day), day, day_start(i), 2_000)
    write_mapping(tmp_path / "mapping.yaml")
    want = set().union(*(expected_ids(day_start(i), 2_000) for i in range(4)))
    job = f"week-{uuid.uuid4().hex[:8]}"
    args = [
        *CLI,
        "range",
        str(tmp_path / "usage" / "dt={date:%Y-%m-%d}"),
        "--mapping",
        str(tmp_path / "mapping.yaml"),
        "--job",
        job,
        "--stream",
        firehose_stream,
        "--start",
        days[0].isoformat(),
        "--end",
        days[-1].isoformat(),
        "--checkpoint",
        str(tmp_path / "ckpt"),
        "--endpoint-url",
        strict_firehose.endpoint_url,
        "--region",
        "us-east-1",
        "--chunk-rows",
        "200",
        "--max-records-per-second",
        "800",
        "--prefect" if with_prefect else "--no-prefect",
    ]
    proc = _start(args, env)
    _wait_records(strict_firehose, firehose_stream, 1_500, proc)
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    code, err, took = _finish(proc, sent)
    assert code == 130, err
    assert took < 5.0, (took, err)
    _assert_one_interrupted_line(err)
    assert len(set(strict_firehose.transaction_ids(firehose_stream))) < len(want)
    if api is not None:  # the range's flow run and its days' nested ones: none left running
        assert _flow_run_states(api, job) == ["CANCELLED"]
        days_states = _flow_run_states(api, job, prefix=True)
        assert days_states and set(days_states) <= {"CANCELLED", "COMPLETED"}, days_states
    done = subprocess.run(args, env=env, capture_output=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    delivered = strict_firehose.transaction_ids(firehose_stream)
    assert set(delivered) == want
    dupes = sum(c - 1 for c in Counter(delivered).values())
    assert dupes <= 2 * CHUNKS_IN_FLIGHT * 200  # the days in flight (concurrency 2)
