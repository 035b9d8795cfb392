"""Upgrades: a job checkpointed by commit b96172b resumes with this code, sending nothing twice.

The fixtures (tests/fixtures/upgrade_b96172b, written by its make_fixtures.py WITH b96172b) hold
four jobs stopped part-way: b96172b's single-process layout and its Dask layout (shards.json and
one checkpoint per shard), each on a local directory and on S3, plus `delivered.json`, the
invoice lines whose actions the strict Firehose stand-in acknowledged to the old run.

Each test copies one checkpoint into a tmp directory or a fresh moto bucket, recreates the
inputs at the absolute path the checkpoint names (a local file's key is its absolute path, its
identity its size and mtime), reruns the same job through the CLI (a subprocess, a real Prefect
server, the strict stand-in on 127.0.0.1) and checks: exit 0; no transaction_id the old run
delivered is sent again; every other row is sent exactly once; the summary counts the old
deliveries as skipped. `delivered.json` is first checked against what the old checkpoints say
they hold (done chunks x chunk_rows), so a fixture that disagrees with itself fails loudly.

Two more cases resume a job in the other run model (an old single-process job with --workers 2,
an old Dask job in one process): with one run model (issue 11) both resume as well.

Runtime: about 100 s on a 2-core machine (6 CLI runs, 2 of them on a module-scoped LocalCluster,
1 starting its own with --workers 2), plus about 30 s to start the session's Prefect server.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.datasets import expected_id
from tests.standins.prefect_server import PrefectServer

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

FIXTURES = Path(__file__).parent / "fixtures" / "upgrade_b96172b"
# Where b96172b read the inputs: their absolute paths are the checkpoint keys.
DATA = Path("/tmp/moesif-backfill-upgrade-fixture/data")
MTIME_NS = 1_790_000_000_000_000_000  # the inputs' mtime then (part of a file's identity)
JOB = "upgrade"
ROWS = 8_000  # a.parquet lines 1..3000, b.parquet 3001..6000, c.csv 6001..8000
CHUNK_ROWS = {"single": 500, "sharded": 100}  # as the old runs had them
CLI = [sys.executable, "-m", "moesif_backfill.cli"]


# ------------------------------------------------------------------------------ the fixtures


def _install_inputs() -> None:
    """Recreate the inputs at DATA byte for byte with their old mtime. Atomic per file (a
    temporary file renamed over the old one), so concurrent test processes never see a
    partial file; a file already right is left alone."""
    DATA.mkdir(parents=True, exist_ok=True)
    for src in sorted((FIXTURES / "data").iterdir()):
        dest = DATA / src.name
        data = src.read_bytes()
        if dest.exists():
            st = dest.stat()
            if st.st_mtime_ns == MTIME_NS and dest.read_bytes() == data:
                continue
        fd, tmp = tempfile.mkstemp(dir=DATA, prefix=f".{src.name}.")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.utime(tmp, ns=(MTIME_NS, MTIME_NS))
        os.replace(tmp, dest)


def _line_ranges(case: str) -> set[int]:
    """The invoice lines the old run of `case` delivered (delivered.json)."""
    ranges = json.loads((FIXTURES / "delivered.json").read_text())[case]
    return {n for first, last in ranges for n in range(first, last + 1)}


def _body(path: Path) -> dict[str, Any]:
    envelope = json.loads(path.read_text())
    body: dict[str, Any] = envelope["body"]
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert hashlib.sha256(canonical.encode()).hexdigest() == envelope["sha256"], path
    return body


def _first_line(key: str) -> int:
    """The invoice line of the first row of input `key` (make_fixtures.py's tables)."""
    return {"a.parquet": 1, "b.parquet": 3_001, "c.csv": 6_001}[Path(key).name]


def _checkpointed_lines(case: str) -> set[int]:
    """The invoice lines the old checkpoint of `case` records as delivered: its done chunks x
    chunk_rows, from each shard's first row in the Dask layout."""
    root = FIXTURES / "checkpoints" / case
    lines: set[int] = set()
    if case.startswith("single"):
        units = [(_body(root / JOB / "state.json"), {})]
    else:
        layout = _body(root / JOB / "shards.json")
        first_rows: dict[str, int] = {}  # shard id -> the file row it starts at
        for key, rec in layout["files"].items():
            row = 0
            for (a, b), n in zip(rec["row_groups"] or [], rec["rows"] or [], strict=True):
                sid = hashlib.sha256(f"{key}\n{(a, b)}".encode()).hexdigest()[:16]
                first_rows[sid] = row
                row += n
        units = []
        for d in sorted(root.glob(f"{JOB}.shard-*")):
            sid = d.name.rsplit("-", 1)[1]
            units.append((_body(d / "state.json"), {"first": first_rows[sid]}))
        assert not _body(root / JOB / "state.json")["files"]  # all progress is in the shards
    for body, shard in units:
        for key, prog in body["files"].items():
            start = _first_line(key) + shard.get("first", 0)
            c = prog["chunk_rows"]
            for a, b in prog["done"]:
                lines.update(range(start + a * c, start + b * c))
    return lines


@pytest.fixture(scope="module")
def inputs() -> None:
    _install_inputs()


# ------------------------------------------------------------------------------ the rerun


def _checkpoint(case: str, tmp_path: Path, moto: Any) -> str:
    """The old checkpoint of `case`, copied to a tmp directory or a fresh moto bucket."""
    src = FIXTURES / "checkpoints" / case
    if case.endswith("local"):
        shutil.copytree(src, tmp_path / "ckpt")
        return str(tmp_path / "ckpt")
    s3 = moto.s3_client()
    bucket = f"upgrade-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        s3.put_object(Bucket=bucket, Key=f"{case}/{path.relative_to(src)}", Body=path.read_bytes())
    return f"s3://{bucket}/{case}/"


def _rerun(
    case: str,
    tmp_path: Path,
    *,
    moto: Any,
    firehose: Any,
    stream: str,
    server: PrefectServer,
    cluster: list[str],
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any] | None]:
    """Run the job of `case` again with this code; the CLI's result and its summary."""
    summary = tmp_path / "summary.json"
    layout = case.split("-", maxsplit=1)[0]
    args = [
        *CLI,
        "run",
        str(DATA),
        *("--mapping", str(FIXTURES / "mapping.yaml")),
        *("--stream", stream, "--endpoint-url", firehose.endpoint_url, "--region", "us-east-1"),
        *("--s3-endpoint-url", moto.endpoint_url),
        *("--checkpoint", _checkpoint(case, tmp_path, moto), "--job", JOB),
        *("--chunk-rows", str(CHUNK_ROWS[layout]), "--allow-older-than-30-days"),
        *("--lease-seconds", "2", "--summary-json", str(summary), "--quiet"),
        *cluster,
    ]
    done = subprocess.run(
        args,
        cwd=tmp_path,  # an S3 checkpoint's rejects file goes under the working directory
        env=server.env(),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    data = json.loads(summary.read_text()) if summary.exists() else None
    return done, data


def _check_resumed(
    case: str,
    done: subprocess.CompletedProcess[str],
    summary: dict[str, Any] | None,
    received: list[str],
) -> None:
    old_lines = _line_ranges(case)
    # The fixture agrees with itself: the old checkpoint holds exactly what Firehose took.
    assert _checkpointed_lines(case) == old_lines
    assert done.returncode == 0, done.stderr[-3000:]
    old = {expected_id(n) for n in old_lines}
    rest = {expected_id(n) for n in range(1, ROWS + 1)} - old
    again = old.intersection(received)
    assert not again, f"{len(again)} action(s) the old run delivered were sent again"
    twice = {i: n for i, n in Counter(received).items() if n > 1}
    assert not twice, f"{len(twice)} action(s) sent more than once"
    assert set(received) == rest, f"{len(rest - set(received))} row(s) never sent"
    assert summary is not None
    assert summary["status"] == "complete" and summary["accounted"], summary
    assert summary["rows_skipped"] == len(old_lines)
    assert summary["actions_sent"] == len(rest)
    assert summary["rows_rejected"] == 0
    assert summary["job_totals"]["rows_sent"] == ROWS


# (the fixture's layout and store, where the rerun runs): each b96172b layout resumed where it
# ran then, and each moved to the other runner (one process <-> a Dask cluster).
RESUMES = [
    ("single-local", "here"),
    ("single-s3", "here"),
    ("sharded-local", "dask-address"),
    ("sharded-s3", "dask-address"),
    ("single-local", "workers"),
    ("sharded-local", "here"),
]


@pytest.mark.usefixtures("inputs")
@pytest.mark.parametrize(("case", "runner"), RESUMES)
def test_old_job_resumes_without_resending(
    case: str,
    runner: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    prefect_server: PrefectServer,
    moto_firehose: Any,
    strict_firehose: Any,
    firehose_stream: str,
) -> None:
    cluster: list[str] = []
    if runner == "workers":
        cluster = ["--workers", "2"]
    elif runner == "dask-address":  # the module's LocalCluster, started only for these cases
        cluster = ["--dask-address", request.getfixturevalue("dask_cluster").scheduler.address]
    done, summary = _rerun(
        case,
        tmp_path,
        moto=moto_firehose,
        firehose=strict_firehose,
        stream=firehose_stream,
        server=prefect_server,
        cluster=cluster,
    )
    _check_resumed(case, done, summary, strict_firehose.transaction_ids(firehose_stream))
