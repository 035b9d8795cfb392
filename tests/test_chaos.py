"""Chaos: the CLI as a subprocess, killed with SIGKILL at seeded random moments, rerun until the
job completes. Three scenarios run side by side, each on its own stream and job:

* in-flight   killed at a random moment while batches are in flight (by delivered count)
* checkpoint  killed between writing the new checkpoint and renaming it into place
* reading     killed while a source batch is being read

Afterwards every expected transaction_id has been delivered, the duplicates are bounded by the
chunks in flight at each kill, and the final summary and the checkpoint account for every row.
Set CHAOS_REPORT=path.json to keep the figures.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

from moesif_backfill.failpoints import ENV as FAILPOINTS_ENV
from tests.datasets import expected_ids, write_mapping, write_payments
from tests.runner import file_progress

pytestmark = pytest.mark.e2e

CHUNK_ROWS = 500
CHUNKS_IN_FLIGHT = 4
READ_BATCH_ROWS = 1024  # what the engine asks the reader for with 500-row chunks


@dataclass
class Outcome:
    scenario: str
    rows: int
    kills: int = 0
    runs: int = 0
    delivered: int = 0
    duplicates: int = 0
    duplicate_bound: int = 0
    exit_codes: list[int] = field(default_factory=list)
    seconds: float = 0.0


class Scenario:
    def __init__(
        self, name: str, tmp: Path, server: Any, api: str, *, rows: int, kills: int
    ) -> None:
        self.name, self.tmp, self.server, self.api = name, tmp, server, api
        self.rows, self.want_kills = rows, kills
        self.rng = random.Random(f"chaos-{name}")
        self.stream = f"chaos-{name}-{uuid.uuid4().hex[:8]}"
        self.job = f"chaos-{name}"
        server.create_stream(self.stream)
        self.src = write_payments(tmp / f"{name}.parquet", 1, rows)
        self.mapping = write_mapping(tmp / "m.yaml")

    def args(self, n: int) -> list[str]:
        return [
            sys.executable, "-m", "moesif_backfill.cli", "run", str(self.src),
            "--mapping", str(self.mapping), "--stream", self.stream,
            "--endpoint-url", self.server.endpoint_url, "--region", "us-east-1",
            "--checkpoint", str(self.tmp / "ckpt"), "--job", self.job,
            "--chunk-rows", str(CHUNK_ROWS), "--quiet",
            "--summary-json", str(self.tmp / f"{self.name}-summary-{n}.json"),
        ]  # fmt: skip

    def rows_done(self) -> int:
        if not (self.tmp / "ckpt" / self.job).exists():
            return 0
        prog = file_progress(self.tmp / "ckpt", self.job, self.src)
        if prog is None:
            return 0
        return max((b for _, b in prog.done), default=0) * CHUNK_ROWS

    def failpoint(self) -> str | None:
        if self.name == "checkpoint":
            return f"checkpoint.before_replace={self.rng.randint(2, 6)}"
        if self.name == "reading":
            skip = math.ceil(self.rows_done() / READ_BATCH_ROWS)
            return f"reader.batch={skip + self.rng.randint(1, 4)}"
        return None

    def run(self) -> Outcome:
        out = Outcome(self.name, self.rows)
        start = time.monotonic()
        for n in range(1, 4 * self.want_kills):
            env = dict(os.environ, PREFECT_API_URL=self.api, PREFECT_LOGGING_LEVEL="WARNING")
            env.pop(FAILPOINTS_ENV, None)
            point = self.failpoint() if out.kills < self.want_kills else None
            if point:
                env[FAILPOINTS_ENV] = point
            proc = subprocess.Popen(
                self.args(n), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            if self.name == "in-flight" and out.kills < self.want_kills:
                self._kill_mid_flight(proc)
            _stdout, err = proc.communicate(timeout=300)
            out.runs += 1
            out.exit_codes.append(proc.returncode)
            if proc.returncode == -signal.SIGKILL:
                out.kills += 1
                continue
            assert proc.returncode == 0, err.decode()[-3000:]
            if out.kills >= self.want_kills:
                self._check(out, n)
                break
        out.seconds = round(time.monotonic() - start, 1)
        return out

    def _kill_mid_flight(self, proc: subprocess.Popen[bytes]) -> None:
        target = len(self.server.records(self.stream)) + self.rng.randint(500, 3_000)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if len(self.server.records(self.stream)) >= target:
                proc.send_signal(signal.SIGKILL)
                return
            time.sleep(0.005)

    def _check(self, out: Outcome, last_run: int) -> None:
        delivered = self.server.transaction_ids(self.stream)
        assert set(delivered) == expected_ids(1, self.rows), f"{self.name}: rows lost"
        out.delivered = len(delivered)
        out.duplicates = sum(c - 1 for c in Counter(delivered).values())
        out.duplicate_bound = out.kills * CHUNKS_IN_FLIGHT * CHUNK_ROWS
        assert out.duplicates <= out.duplicate_bound, asdict(out)
        final = json.loads((self.tmp / f"{self.name}-summary-{last_run}.json").read_text())
        assert final["accounted"] and final["rows_read"] == self.rows
        assert final["actions_sent"] + final["rows_skipped"] == self.rows
        assert final["job_totals"]["rows_sent"] == self.rows  # every chunk counted once


def test_sigkill_chaos_loses_nothing(
    tmp_path: Path, prefect_api: str, strict_firehose: Any
) -> None:
    strict_firehose.configure(latency_s=0.05)
    plan = [("in-flight", 40_000, 8), ("checkpoint", 20_000, 6), ("reading", 20_000, 6)]
    scenarios = []
    for name, rows, kills in plan:
        (tmp_path / name).mkdir()
        scenarios.append(
            Scenario(name, tmp_path / name, strict_firehose, prefect_api, rows=rows, kills=kills)
        )
    with ThreadPoolExecutor(len(scenarios)) as pool:
        outcomes = list(pool.map(Scenario.run, scenarios))
    report = [asdict(o) for o in outcomes]
    print(json.dumps(report, indent=1))
    if os.environ.get("CHAOS_REPORT"):
        Path(os.environ["CHAOS_REPORT"]).write_text(json.dumps(report, indent=1))
    assert sum(o.kills for o in outcomes) >= 20
    for o in outcomes:
        assert o.kills == dict((n, k) for n, _, k in plan)[o.scenario], asdict(o)
