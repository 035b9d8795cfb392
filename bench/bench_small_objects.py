"""Many small S3 objects (issue 11 item 4): wall time of a whole send run, without Prefect.

    python bench/bench_small_objects.py                          # 1,100 objects, then 1 object
    python bench/bench_small_objects.py --objects 1100 --rows 2
    python bench/bench_small_objects.py --baseline-worktree /work/wt/b961   # + the same of b96172b

Starts a moto server (S3, its own process) and the strict Firehose stand-in (its own process)
on 127.0.0.1, writes ``--objects`` Parquet objects of ``--rows`` rows each under one prefix,
and one object holding all those rows under another, then runs the job on each with a fresh
local checkpoint: ``Run.prepare()``, ``Run.process_file(i)`` for every file, ``Run.finish()``
(what ``moesif-backfill run s3://... --stream s`` does, without Prefect's flow and server) in a
child process with the S3 endpoint and dummy keys in its environment. Prints the wall time of
each run (process start to exit: planning included) and the run's own ``duration_s``. With
``--baseline-worktree PATH`` the same runs of that checkout (``PYTHONPATH=PATH``, the same
venv) and the ratio. Checks the stand-in stored exactly one record per row (exit 1 if not).
``--mode validate`` reads and transforms everything but sends nothing and commits no checkpoint:
the S3 and reading part alone. ``--profile PATH`` writes a cProfile of each run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import bench_dry_run as dry  # noqa: E402
import boto3  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from botocore.config import Config  # noqa: E402

from bench import REGION, StandIn, aws_env  # noqa: E402

BUCKET = "bench-small"
# Runs the job as the CLI's core does, in a fresh process: on this tree `pipeline.job.run_job`
# (what `moesif-backfill run` calls without a Prefect API); on b96172b its core without Prefect.
RUNNER = """
import cProfile, json, os, sys, time
t0 = time.perf_counter()
profile = cProfile.Profile() if os.environ.get("BENCH_PROFILE") else None
if profile is not None:
    profile.enable()
try:  # this tree: the core's entry point, as the CLI calls it
    from pipeline.job import run_job
    from pipeline.settings import RunSettings
    summary = run_job(RunSettings(**json.loads(sys.argv[1]))).summary
except ImportError:  # b96172b: its core without the Prefect flow around it
    from flows.run import Run
    from flows.settings import RunSettings
    run = Run(RunSettings(**json.loads(sys.argv[1])))
    error = None
    try:
        plan = run.prepare()
        for index in range(len(plan.files)):
            run.process_file(index)
    except Exception as exc:
        error = exc
    summary = run.finish(error)
if profile is not None:
    profile.disable()
    profile.dump_stats(os.environ["BENCH_PROFILE"])
print(json.dumps({"status": summary.status, "error": summary.error,
                  "actions_sent": summary.actions_sent, "rows_read": summary.rows_read,
                  "files": summary.files_total,
                  "duration_s": summary.duration_s,
                  "in_process_s": round(time.perf_counter() - t0, 2)}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Moto:
    """moto's server in its own process on 127.0.0.1."""

    def __init__(self) -> None:
        port = free_port()
        exe = Path(sys.executable).with_name("moto_server")
        self.proc = subprocess.Popen(
            [str(exe), "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise SystemExit("moto_server did not start")

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id="bench-not-a-secret",
            aws_secret_access_key="bench-not-a-secret",
            config=Config(max_pool_connections=16),
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)


def parquet_bytes(first: int, rows: int) -> bytes:
    now_us = int(time.time() * 1e6) - 3_600_000_000
    batch = dry._row_group(first, rows, now_us, 7)
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_batches([batch]), buf)
    return buf.getvalue()


def upload(moto: Moto, objects: int, rows: int) -> None:
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    s3 = moto.client()
    s3.create_bucket(Bucket=BUCKET)

    def put(i: int) -> None:
        body = parquet_bytes(i * rows, rows)
        s3.put_object(Bucket=BUCKET, Key=f"many/part-{i:05d}.parquet", Body=body)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(objects)))
    s3.put_object(Bucket=BUCKET, Key="one/all.parquet", Body=parquet_bytes(0, objects * rows))


def run_job(  # noqa: PLR0917 - one call site
    tree: Path,
    source: str,
    mapping: Path,
    moto: Moto,
    fh: StandIn,
    work: Path,
    tag: str,
    profile: Path | None = None,
    mode: str = "send",
) -> dict[str, Any]:
    ckpt = work / f"ckpt-{tag}"
    settings = {
        "sources": [source],
        "mapping": str(mapping),
        "mode": mode,
        "streams": ["s"] if mode == "send" else [],
        "endpoint_url": fh.url,
        "region": REGION,
        "checkpoint": str(ckpt),
        "s3_endpoint_url": moto.url,
        "allow_older_than_30_days": True,
        "job": f"bench-{tag}",
    }
    env = aws_env(work)
    env["PYTHONPATH"] = str(tree)
    env.pop("PREFECT_API_URL", None)
    if profile is not None:
        env["BENCH_PROFILE"] = str(profile.with_suffix(f".{tag}.prof"))
    before = fh.stats().get("records_stored", 0)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(settings)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not proc.stdout.strip():
        raise SystemExit(f"{tag}: the run failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = round(wall, 2)
    result["records_stored"] = fh.stats().get("records_stored", 0) - before
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--objects", type=int, default=1100)
    p.add_argument("--rows", type=int, default=2, help="rows per object")
    p.add_argument("--baseline-worktree", type=Path, default=None)
    p.add_argument("--skip-one", action="store_true", help="leave out the one-object run")
    p.add_argument("--profile", type=Path, help="cProfile each run to PATH.<run>.prof")
    p.add_argument(
        "--mode",
        choices=["send", "validate"],
        default="send",
        help="validate: read and transform everything, send nothing, no checkpoint commits "
        "(the S3 and reading part alone)",
    )
    args = p.parse_args()
    trees = [("this tree", ROOT)]
    if args.baseline_worktree is not None:
        trees.append(("baseline", args.baseline_worktree.resolve()))
    total_rows = args.objects * args.rows
    failed = False
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-small-") as tmp:
        work = Path(tmp)
        mapping = work / "mapping.yaml"
        mapping.write_text(dry.MAPPING_YAML)
        moto = Moto()
        try:
            t0 = time.perf_counter()
            upload(moto, args.objects, args.rows)
            print(f"uploaded {args.objects} objects in {time.perf_counter() - t0:.1f}s")
            with StandIn(["s"]) as fh:
                runs = [("many", f"s3://{BUCKET}/many/")]
                if not args.skip_one:
                    runs.append(("one", f"s3://{BUCKET}/one/"))
                for name, tree in trees:
                    for what, source in runs:
                        tag = f"{what}-{'base' if tree != ROOT else 'head'}"
                        r = run_job(
                            tree, source, mapping, moto, fh, work, tag, args.profile, args.mode
                        )
                        results[f"{name}/{what}"] = r
                        if args.mode == "validate":
                            r["records_stored"] = r["rows_read"]  # nothing is sent
                        ok = r["status"] == "complete" and r["records_stored"] == total_rows
                        failed |= not ok
                        objects = args.objects if what == "many" else 1
                        print(
                            f"{name:9} {objects:5} object(s), {total_rows} rows: "
                            f"wall {r['wall_s']:6.2f}s  run duration {r['duration_s']:6.2f}s  "
                            f"stored {r['records_stored']}  {r['status']}"
                            + ("" if ok else f"  FAILED: {r.get('error')}")
                        )
        finally:
            moto.stop()
    if args.baseline_worktree is not None:
        for what in ("many", "one"):
            head, base = results.get(f"this tree/{what}"), results.get(f"baseline/{what}")
            if head and base:
                print(f"{what}: baseline / this tree = {base['wall_s'] / head['wall_s']:.1f}x")
    many = results["this tree/many"]["wall_s"]
    print(f"target <= 20 s for {args.objects} objects: {'met' if many <= 20 else 'MISSED'}")
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    sys.exit(main())
