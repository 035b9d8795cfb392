"""Benchmark of issue 6, in one run on one machine: every figure the README's table shows.

    python bench/bench.py                       # everything (20M-row memory run included)
    python bench/bench.py --quick               # smaller sizes, no 20M rows (~3-4 minutes)
    python bench/bench.py --sections ceiling,e2e --json .bench/bench.json
    python bench/bench.py --skip-20m --baseline-worktree ../b961   # also b96172b's CLI: ratios

Sections (``--sections``, comma-separated; default all):

* ``baseline``: the per-row script of `bench_dry_run` on a ``--baseline-rows`` sample: rows/s.
* ``dryrun``: ``moesif-backfill run FILE --dry-run``: rows/s over the summary's ``duration_s``
  and its ratio to the baseline. Its output also gives the pre-built records of ``ceiling``.
* ``ceiling``: the raw-send ceiling: the first ``--ceiling-records`` records of that output,
  already built, pushed by plain boto3 ``put_record_batch`` calls of 500 records on
  ``--concurrency`` threads (a client from ``make_firehose_client``, the one the CLI uses:
  retries off, no parameter validation) against the strict Firehose stand-in (its own process).
* ``e2e``: ``moesif-backfill run FILE --stream s`` against a fresh stand-in process (Parquet
  read, transform, send, checkpoint): actions/s = actions_sent / duration_s, and its ratio to
  the ceiling of the same run (target >= 70%). Checks the stand-in stored exactly one record
  per row.
* ``e2e2``: the same with ``--stream a --stream b`` (actions spread by transaction_id).
* ``memory``: peak RSS of the CLI process (its VmHWM high-water mark, read every 0.2 s)
  running ``moesif-backfill validate`` at each ``--memory-rows`` size (default 2M and 20M;
  the 20M-row file is generated once into .bench/data/ and cached).
* ``quota``: the stand-in enforcing ``--quota-records`` records/s and ``--quota-mib`` MiB/s on
  its stream; (1) the CLI given the same limits, (2) the CLI with no limit (adaptive rate):
  achieved share of the quota, measured from the stand-in's stored-record counter sampled every
  0.2 s between the first and the last stored record, and the share of throttled calls.

``--baseline-worktree PATH``: the ``dryrun``, ``memory`` and ``quota`` sections also run the CLI
of that checkout (same interpreter and packages, ``PYTHONPATH=PATH``, its own PREFECT_HOME),
right after this checkout's, on the same inputs and the same stand-in (this checkout's); the
ratios and "no worse" verdicts are printed after the results (bench_compare.py). The CLI always
runs with ``PYTHONPATH`` set to the checkout measured: the venv's editable install may point at
another checkout.

All servers listen on 127.0.0.1 and are started and stopped by this script. Absolute rates
depend on the machine and its load (printed); ratios measured in the same run are what to
compare. Missed targets are printed, they do not change the exit status; a correctness failure
(records lost or duplicated) exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Self

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import bench_dry_run as dry  # noqa: E402
from bench_compare import print_comparison  # noqa: E402
from bench_results import finish  # noqa: E402

from connectors.firehose_batching import split_batches  # noqa: E402
from connectors.firehose_client import make_firehose_client  # noqa: E402

SECTIONS = ("baseline", "dryrun", "ceiling", "e2e", "e2e2", "memory", "quota")
REGION = "us-east-1"
TARGET_DRY_RATIO = 25.0
TARGET_CEILING_SHARE = 0.70
TARGET_ACTIONS_PER_S = 50_000
TARGET_MEMORY_GROWTH = 1.10
TARGET_QUOTA_SHARE = 0.90
TARGET_THROTTLED_SHARE = 0.01
TARGET_ADAPTIVE_SHARE = 0.80
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --------------------------------------------------------------------------- helpers
def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (from /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def aws_env(bench_dir: Path, tree: Path | None = None) -> dict[str, str]:
    env = dry.child_env(bench_dir, tree)
    env.update(
        AWS_ACCESS_KEY_ID="bench-not-a-secret",
        AWS_SECRET_ACCESS_KEY="bench-not-a-secret",
        AWS_DEFAULT_REGION=REGION,
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    env.pop("AWS_PROFILE", None)
    return env


class StandInProcess:
    """A stand-in in its own process (its own GIL) on 127.0.0.1, which prints its URL first:
    `cpu()` is the CPU it used since it started answering."""

    def __init__(self, cmd: list[str], what: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http://"):
            self.stop()
            raise SystemExit(f"the {what} did not start: {cmd}")
        self.cpu0 = cpu_seconds(self.proc.pid)

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid) - self.cpu0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class StandIn(StandInProcess):
    """The strict Firehose stand-in in its own process (its own GIL), on 127.0.0.1."""

    def __init__(self, streams: list[str], **faults: float) -> None:
        cmd = [sys.executable, "-m", "tests.standins.strict_firehose", "--port", "0"]
        for name in streams:
            cmd += ["--stream", name]
        for key, value in faults.items():
            cmd += ["--" + key.replace("_", "-"), str(value)]
        super().__init__(cmd, "strict Firehose stand-in")

    def get(self, path: str) -> Any:
        with _NO_PROXY.open(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get("/_strict/stats")
        return result


def run_cli(argv: list[str], bench_dir: Path, tag: str, tree: Path | None = None) -> dict[str, Any]:
    """Run the CLI of checkout *tree* (default this one) as a child; wall time, CPU, exact
    peak RSS (wait4) and its summary."""
    out = bench_dir / "out"
    summary_path = out / f"bench-{tag}.summary.json"
    summary_path.unlink(missing_ok=True)
    log = out / f"bench-{tag}.log"
    cmd = [dry.cli_path(), *argv]
    if argv[0] == "run":
        cmd += ["--summary-json", str(summary_path)]
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            cmd, cwd=bench_dir, env=aws_env(bench_dir, tree), stdout=fh, stderr=subprocess.STDOUT
        )
        sampler = dry.RssSampler(proc.pid, every=0.2)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    code = os.waitstatus_to_exitcode(status)
    result: dict[str, Any] = {
        "command": " ".join(cmd),
        "exit_code": code,
        "wall_s": round(wall, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        # VmHWM of the CLI process itself (its high-water mark, read every 0.2 s while it
        # runs). ru_maxrss of wait4 is the largest process of the child's tree, which can be
        # the temporary Prefect API server the CLI starts, not the CLI.
        "peak_rss_mb": round(sampler.cli_hwm_kb / 1024, 1),
        "tree_largest_process_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "tree_peak_rss_mb_sampled": round(sampler.tree_peak_kb / 1024, 1),
        "loadavg_1m": [load0, os.getloadavg()[0]],
        "log": str(log),
    }
    if summary_path.exists():
        result["summary"] = json.loads(summary_path.read_text())
    return result


def tail(path: str, n: int = 1500) -> str:
    return Path(path).read_text(errors="replace")[-n:]


class Sampler(threading.Thread):
    """Samples the stand-in's records_stored every `every` seconds (the achieved rate)."""

    def __init__(self, standin: StandIn, every: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.standin, self.every = standin, every
        self.points: list[tuple[float, int, int]] = []  # (time, records, bytes)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(OSError, ValueError):
                s = self.standin.stats()
                self.points.append((time.monotonic(), s["records_stored"], s["bytes_stored"]))
            self.stop.wait(self.every)

    def rate(self) -> tuple[float, float, float]:
        """(records/s, bytes/s, seconds) between the first and the last change of the count."""
        changed = [p for i, p in enumerate(self.points) if i and p[1] != self.points[i - 1][1]]
        if len(changed) < 2:
            return 0.0, 0.0, 0.0
        first = next(p for p in self.points if p[1] > 0)
        last = changed[-1]
        # the first sample with records: its count arrived between this and the previous sample
        seconds = last[0] - first[0]
        if seconds <= 0:
            return 0.0, 0.0, 0.0
        return (last[1] - first[1]) / seconds, (last[2] - first[2]) / seconds, seconds


# --------------------------------------------------------------------------- sections
def tag_of(tree: Path | None) -> str:
    """Suffix of the log and summary files of a run of another checkout."""
    return "" if tree is None else f"-{tree.name}"


def section_dryrun(
    args: argparse.Namespace,
    bench_dir: Path,
    mapping: Path,
    source: Path,
    *,
    tree: Path | None = None,
) -> dict[str, Any]:
    tag = f"bench-{args.rows}{tag_of(tree)}"
    return dry.run_project(source, mapping, bench_dir, tag, args.rows, tree=tree)


def prebuilt_records(out_dir: Path, limit: int) -> list[bytes]:
    records: list[bytes] = []
    for path in sorted(out_dir.glob("*.ndjson.gz")):
        with dry._open_text(path) as fh:
            for line in fh:
                records.append(line.rstrip("\n").encode("utf-8"))
                if len(records) >= limit:
                    return records
    return records


def section_ceiling(records: list[bytes], concurrency: int) -> dict[str, Any]:
    """Plain boto3 put_record_batch of pre-built records, `concurrency` calls at once."""
    with StandIn(["ceiling"]) as fh:
        client = make_firehose_client(
            region=REGION, endpoint_url=fh.url, max_pool_connections=concurrency + 2
        )
        batches = split_batches(records)

        def put(batch: Any) -> int:
            response = client.put_record_batch(
                DeliveryStreamName="ceiling", Records=[{"Data": r} for r in batch]
            )
            if response["FailedPutCount"]:
                raise RuntimeError("records failed without faults configured")
            return len(batch)

        put(batches[0])  # connection set-up and botocore's lazy loading: not measured
        rest = batches[1:]
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            sent = sum(pool.map(put, rest))
        seconds = time.perf_counter() - t0
        client_cpu = time.process_time() - cpu0
        stored = fh.stats()["records_stored"]
        server_cpu = fh.cpu()
    return {
        "records": sent,
        "seconds": round(seconds, 3),
        "records_per_s": round(sent / seconds, 1),
        "concurrency": concurrency,
        "client_cpu_us_per_record": round(client_cpu / sent * 1e6, 2),
        "standin_cpu_us_per_record": round(server_cpu / (sent + len(batches[0])) * 1e6, 2),
        "stored_ok": stored == len(records),
        "loadavg_1m": os.getloadavg()[0],
    }


def send_argv(source: Path, mapping: Path, url: str, streams: list[str], ckpt: Path) -> list[str]:
    argv = ["run", str(source), "--mapping", str(mapping)]
    for name in streams:
        argv += ["--stream", name]
    argv += [
        "--endpoint-url",
        url,
        "--region",
        REGION,
        "--checkpoint",
        str(ckpt),
        "--allow-older-than-30-days",
        "--quiet",
    ]
    return argv


def section_e2e(  # noqa: PLR0917 - one call site, named by position
    args: argparse.Namespace,
    bench_dir: Path,
    mapping: Path,
    source: Path,
    rows: int,
    streams: list[str],
    tag: str,
) -> dict[str, Any]:
    ckpt = bench_dir / "out" / f"ckpt-{tag}"
    shutil.rmtree(ckpt, ignore_errors=True)
    with StandIn(streams) as fh:
        argv = send_argv(source, mapping, fh.url, streams, ckpt)
        argv += ["--max-in-flight", str(args.concurrency)]
        run = run_cli(argv, bench_dir, tag)
        stats = fh.stats()
        run["standin_cpu_s"] = round(fh.cpu(), 2)
    shutil.rmtree(ckpt, ignore_errors=True)
    summary = run.get("summary")
    if run["exit_code"] != 0 or summary is None:
        text = tail(run["log"])
        unavailable = len(streams) > 1 and any(
            s in text.lower() for s in ("not implemented", "not supported", "not yet")
        )
        run["available"] = not unavailable
        run["ok"] = unavailable
        run["error_tail"] = text
        return run
    per_stream = {name: stats["streams"].get(name, {}).get("records", 0) for name in streams}
    stored = sum(per_stream.values())
    run.update(
        available=True,
        actions_sent=summary["actions_sent"],
        duration_s=summary["duration_s"],
        actions_per_s=round(summary["actions_sent"] / summary["duration_s"], 1),
        firehose_calls=summary["firehose_calls"],
        records_stored_per_stream=per_stream,
        records_stored=stored,
        ok=stored == rows == summary["actions_sent"] and stats["records_received"] == rows,
    )
    return run


def section_memory(
    args: argparse.Namespace,
    bench_dir: Path,
    mapping: Path,
    sizes: list[int],
    *,
    tree: Path | None = None,
) -> dict[str, Any]:
    runs = []
    for size in sizes:
        path, gen_s = dry._files(bench_dir, size, args)
        if gen_s:
            print(f"    generated {path} ({size:,} rows) in {gen_s:.0f}s", flush=True)
        argv = ["validate", str(path), "--mapping", str(mapping), "--allow-older-than-30-days"]
        run = run_cli(argv, bench_dir, f"validate-{size}{tag_of(tree)}", tree)
        run["rows"] = size
        runs.append(run)
        print(
            f"    validate{tag_of(tree)} {size:>12,} rows: peak RSS {run['peak_rss_mb']:.1f} MB, "
            f"wall {run['wall_s']:.1f}s (exit {run['exit_code']})",
            flush=True,
        )
    ok = all(r["exit_code"] == 0 for r in runs)
    growth = runs[-1]["peak_rss_mb"] / runs[0]["peak_rss_mb"] if len(runs) > 1 else None
    return {"runs": runs, "ok": ok, "growth_largest_vs_smallest": growth}


def section_quota(
    args: argparse.Namespace,
    bench_dir: Path,
    mapping: Path,
    source: Path,
    *,
    tree: Path | None = None,
) -> dict[str, Any]:
    quota = {
        "quota_records_per_second": args.quota_records,
        "quota_mib_per_second": args.quota_mib,
    }
    results: dict[str, Any] = {"quota": quota}
    for mode, extra in (
        (
            "client_limits",
            [
                "--max-records-per-second",
                str(args.quota_records),
                "--max-mib-per-second",
                str(args.quota_mib),
            ],
        ),
        ("adaptive", ["--adaptive-rate"]),
    ):
        try:
            fh = StandIn(["q"], **quota)
        except SystemExit:
            results["available"] = False
            results["why"] = "the stand-in has no quota settings yet"
            return results
        with fh:
            if "quota_records_per_second" not in fh.get("/_strict/faults"):
                results["available"] = False
                results["why"] = "the stand-in has no quota settings yet"
                return results
            ckpt = bench_dir / "out" / f"ckpt-quota-{mode}{tag_of(tree)}"
            shutil.rmtree(ckpt, ignore_errors=True)
            sampler = Sampler(fh)
            sampler.start()
            run = run_cli(
                [*send_argv(source, mapping, fh.url, ["q"], ckpt), *extra],
                bench_dir,
                f"quota-{mode}{tag_of(tree)}",
                tree,
            )
            sampler.stop.set()
            sampler.join()
            stats = fh.stats()
            shutil.rmtree(ckpt, ignore_errors=True)
        summary = run.get("summary") or {}
        records_s, bytes_s, seconds = sampler.rate()
        calls = summary.get("firehose_calls") or 0
        shares = [records_s / args.quota_records, bytes_s / (args.quota_mib * 2**20)]
        run.update(
            achieved_records_per_s=round(records_s, 1),
            achieved_mib_per_s=round(bytes_s / 2**20, 3),
            measured_over_s=round(seconds, 1),
            share_of_quota=round(max(shares), 4),
            binding_quota="records" if shares[0] >= shares[1] else "bytes",
            firehose_calls=calls,
            throttled_calls=summary.get("throttled_calls"),
            throttled_share=round((summary.get("throttled_calls") or 0) / calls, 4)
            if calls
            else None,
            records_retried=summary.get("records_retried"),
            standin_quota_throttled=stats.get("quota_throttled"),
            ok=run["exit_code"] == 0 and stats["records_stored"] >= summary.get("actions_sent", -1),
        )
        results[mode] = run
    results["available"] = True
    return results


def median_quota(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Of `--quota-repeat` quota sections, per mode the run with the median share of the quota
    (the lower median for an even count), with every run's share next to it."""
    if not runs[0].get("available"):
        return runs[0]
    result: dict[str, Any] = {"quota": runs[0]["quota"], "available": True, "runs": len(runs)}
    for mode in ("client_limits", "adaptive"):
        ordered = sorted(runs, key=lambda r: float(r[mode]["share_of_quota"]))
        chosen = dict(ordered[(len(ordered) - 1) // 2][mode])
        chosen["share_of_quota_all_runs"] = [r[mode]["share_of_quota"] for r in runs]
        chosen["throttled_share_all_runs"] = [r[mode]["throttled_share"] for r in runs]
        chosen["ok"] = all(r[mode]["ok"] for r in runs)
        result[mode] = chosen
    return result


# --------------------------------------------------------------------------- report
def yes(flag: bool) -> str:
    return "yes" if flag else "NO"


def print_report(r: dict[str, Any]) -> None:  # noqa: PLR0912, PLR0915 - a flat table
    rows: list[tuple[str, str]] = []
    base = r.get("baseline")
    if base:
        rows.append(("per-row baseline", f"{base['rows_per_s']:>10,.0f} rows/s"))
    dr = r.get("dryrun")
    if dr:
        line = f"{dr['rows_per_s_pipeline']:>10,.0f} rows/s (pipeline)"
        if base:
            ratio = dr["rows_per_s_pipeline"] / base["rows_per_s"]
            r["dryrun_ratio"] = round(ratio, 2)
            line += f"  = {ratio:.1f}x baseline (target >= {TARGET_DRY_RATIO:.0f}x: "
            line += yes(ratio >= TARGET_DRY_RATIO) + ")"
        rows.append(("dry-run", line))
    ce = r.get("ceiling")
    if ce:
        rows.append(
            (
                "raw-send ceiling (plain boto3)",
                f"{ce['records_per_s']:>10,.0f} records/s ({ce['records']:,} pre-built records, "
                f"{ce['concurrency']} threads; client {ce['client_cpu_us_per_record']} us/rec, "
                f"stand-in {ce['standin_cpu_us_per_record']} us/rec CPU)",
            )
        )
    for key, label in (("e2e", "end to end, 1 stream"), ("e2e2", "end to end, 2 streams")):
        e = r.get(key)
        if not e:
            continue
        if not e.get("available", True):
            rows.append((label, "not available (the CLI refused several streams)"))
            continue
        if "actions_per_s" not in e:
            rows.append((label, f"FAILED (exit {e['exit_code']}, log {e['log']})"))
            continue
        line = f"{e['actions_per_s']:>10,.0f} actions/s"
        if ce:
            share = e["actions_per_s"] / ce["records_per_s"]
            e["share_of_ceiling"] = round(share, 3)
            line += f" = {share:.0%} of the ceiling"
            if key == "e2e":
                line += f" (target >= {TARGET_CEILING_SHARE:.0%}: "
                line += yes(share >= TARGET_CEILING_SHARE) + ")"
        if key == "e2e":
            line += f"; >= {TARGET_ACTIONS_PER_S:,}/s: {yes(e['actions_per_s'] >= 50_000)}"
        line += (
            f"; {e['actions_sent']:,} in {e['duration_s']:.1f}s, stored "
            f"{e['records_stored_per_stream']}, peak RSS {e['peak_rss_mb']:.0f} MB"
        )
        rows.append((label, line))
    mem = r.get("memory")
    if mem:
        parts = ", ".join(f"{m['rows']:,} rows {m['peak_rss_mb']:.0f} MB" for m in mem["runs"])
        growth = mem["growth_largest_vs_smallest"]
        if growth is not None:
            parts += f"; largest/smallest {growth:.3f} (target <= {TARGET_MEMORY_GROWTH}: "
            parts += yes(growth <= TARGET_MEMORY_GROWTH) + ")"
        rows.append(("peak RSS (validate)", parts))
    q = r.get("quota")
    if q:
        if not q.get("available"):
            rows.append(("quota adherence", f"not available: {q.get('why')}"))
        else:
            for mode, target in (
                ("client_limits", TARGET_QUOTA_SHARE),
                ("adaptive", TARGET_ADAPTIVE_SHARE),
            ):
                m = q[mode]
                line = (
                    f"{m['share_of_quota']:.1%} of the quota ({m['binding_quota']}: "
                    f"{m['achieved_records_per_s']:,.0f} rec/s, {m['achieved_mib_per_s']} MiB/s "
                    f"over {m['measured_over_s']}s), throttled calls {m['throttled_calls']}/"
                    f"{m['firehose_calls']} = {(m['throttled_share'] or 0):.2%}"
                )
                every = m.get("share_of_quota_all_runs") or []
                if len(every) > 1:
                    line += "; runs " + ", ".join(f"{x:.1%}" for x in every)
                line += f" (target >= {target:.0%}"
                line += (
                    f" and < {TARGET_THROTTLED_SHARE:.0%} throttled: " if mode[0] == "c" else ": "
                )
                ok = m["share_of_quota"] >= target and (
                    mode == "adaptive" or (m["throttled_share"] or 0) < TARGET_THROTTLED_SHARE
                )
                rows.append((f"quota, {mode.replace('_', ' ')}", line + yes(ok) + ")"))
    width = max((len(k) for k, _ in rows), default=0)
    print("\nresults")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    print(f"  {'machine':<{width}}  {os.cpu_count()} CPUs, load average {os.getloadavg()}")


# --------------------------------------------------------------------------- main
def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, no 20M-row run")
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset")
    p.add_argument("--skip-20m", action="store_true", help="memory section without 20M rows")
    p.add_argument("--rows", type=int, help="rows of the main input (default 2,000,000)")
    p.add_argument("--baseline-rows", type=int, help="per-row baseline sample (default 100,000)")
    p.add_argument("--ceiling-records", type=int, help="records for the ceiling (default 500,000)")
    p.add_argument("--concurrency", type=int, default=8, help="PutRecordBatch calls at once")
    p.add_argument("--memory-rows", help="sizes for the memory section (default 2M,20M)")
    p.add_argument("--quota-records", type=float, default=2000.0)
    p.add_argument("--quota-mib", type=float, default=1.0)
    p.add_argument("--quota-rows", type=int, help="rows sent under the quota (default 60,000)")
    p.add_argument(
        "--quota-repeat",
        type=int,
        default=1,
        help="quota runs per mode and tree; the median share is reported (adaptive varies)",
    )
    p.add_argument("--row-group-rows", type=int, default=128_000)
    p.add_argument("--seed", type=int, default=20261128)
    p.add_argument("--bench-dir", type=Path, default=ROOT / ".bench")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument(
        "--baseline-worktree",
        type=Path,
        help="also measure the dryrun, memory and quota sections with this checkout's CLI "
        "(e.g. a worktree of b96172b) and print the ratios",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.05,
        help="noise allowed by the 'no worse than the baseline tree' verdicts (default 0.05)",
    )
    args = p.parse_args()
    quick = args.quick
    args.rows = args.rows or (500_000 if quick else 2_000_000)
    args.baseline_rows = args.baseline_rows or (20_000 if quick else 100_000)
    args.ceiling_records = min(args.ceiling_records or (150_000 if quick else 500_000), args.rows)
    args.quota_rows = args.quota_rows or (16_000 if quick else 60_000)
    if args.memory_rows:
        args.memory_sizes = [int(s) for s in args.memory_rows.split(",")]
    elif quick or args.skip_20m:
        args.memory_sizes = [200_000, 2_000_000]
    else:
        args.memory_sizes = [2_000_000, 20_000_000]
    args.section_list = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(args.section_list) - set(SECTIONS)
    if unknown:
        p.error(f"unknown section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    if args.quota_repeat < 1:
        p.error("--quota-repeat must be at least 1")
    if args.baseline_worktree:
        args.baseline_worktree = args.baseline_worktree.resolve()
        if not (args.baseline_worktree / "moesif_backfill" / "cli.py").is_file():
            p.error(f"{args.baseline_worktree} is not a moesif-backfill checkout")
    return args


def commit_of(tree: Path) -> str:
    done = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or "unknown"


def main() -> int:  # noqa: PLR0912, PLR0915 - one linear script of sections
    args = parse_args()
    os.environ.update(aws_env(args.bench_dir.resolve()))  # dummy keys for the ceiling's client
    bench_dir = args.bench_dir.resolve()
    (bench_dir / "out").mkdir(parents=True, exist_ok=True)
    mapping = bench_dir / "mapping.yaml"
    mapping.write_text(dry.MAPPING_YAML)
    wanted = set(args.section_list)
    results: dict[str, Any] = {
        "args": {k: v for k, v in vars(args).items() if isinstance(v, int | float | str | list)},
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    source, gen_s = dry._files(bench_dir, args.rows, args)
    print(
        f"input: {source} ({args.rows:,} rows" + (f", generated in {gen_s:.0f}s)" if gen_s else ")")
    )
    warm = dry.warm_prefect_home(bench_dir, mapping, args.seed)
    if warm is not None:
        print(f"initialised PREFECT_HOME in {warm}s (not measured)")
    ok = True
    other: Path | None = args.baseline_worktree
    bt: dict[str, Any] = {}
    if other is not None and wanted & {"dryrun", "memory", "quota"}:
        results["baseline_worktree"] = bt
        bt.update(path=str(other), commit=commit_of(other), this_commit=commit_of(ROOT))
        print(f"baseline tree: {other} ({bt['commit']}); this tree: {ROOT} ({bt['this_commit']})")
        warm = dry.warm_prefect_home(bench_dir, mapping, args.seed, other)
        if warm is not None:
            print(f"initialised the baseline tree's PREFECT_HOME in {warm}s (not measured)")

    if "baseline" in wanted:
        print(f"[baseline] per-row script on {args.baseline_rows:,} rows ...", flush=True)
        sample = bench_dir / "data" / f"billing-{args.rows}-head-{args.baseline_rows}.parquet"
        dry.head_file(source, sample, args.baseline_rows)
        results["baseline"] = dry.run_baseline(
            sample, bench_dir / "out" / "bench-baseline.ndjson.gz", 1
        )
    records: list[bytes] = []
    if wanted & {"dryrun", "ceiling"}:
        print(f"[dryrun] moesif-backfill run --dry-run on {args.rows:,} rows ...", flush=True)
        dr = section_dryrun(args, bench_dir, mapping, source)
        ok &= dr["rows_read"] == args.rows
        if "ceiling" in wanted:
            records = prebuilt_records(Path(dr["out_dir"]), args.ceiling_records)
        shutil.rmtree(dr["out_dir"], ignore_errors=True)
        if "dryrun" in wanted:
            results["dryrun"] = dr
            if bt:
                print(f"[dryrun] the same with the baseline tree {other} ...", flush=True)
                bdr = section_dryrun(args, bench_dir, mapping, source, tree=other)
                ok &= bdr["rows_read"] == args.rows
                shutil.rmtree(bdr["out_dir"], ignore_errors=True)
                bt["dryrun"] = bdr
    if "ceiling" in wanted:
        print(
            f"[ceiling] plain boto3, {len(records):,} pre-built records, "
            f"{args.concurrency} threads ...",
            flush=True,
        )
        results["ceiling"] = section_ceiling(records, args.concurrency)
        ok &= results["ceiling"]["stored_ok"]
        del records
    if "e2e" in wanted:
        print(f"[e2e] moesif-backfill run --stream s on {args.rows:,} rows ...", flush=True)
        results["e2e"] = section_e2e(args, bench_dir, mapping, source, args.rows, ["s"], "e2e-1")
        ok &= results["e2e"]["ok"]
    if "e2e2" in wanted:
        print("[e2e2] the same with --stream a --stream b ...", flush=True)
        results["e2e2"] = section_e2e(
            args, bench_dir, mapping, source, args.rows, ["a", "b"], "e2e-2"
        )
        ok &= results["e2e2"]["ok"]
    if "memory" in wanted:
        print(f"[memory] moesif-backfill validate at {args.memory_sizes} rows ...", flush=True)
        results["memory"] = section_memory(args, bench_dir, mapping, args.memory_sizes)
        ok &= results["memory"]["ok"]
        if bt:
            print(f"[memory] the same with the baseline tree {other} ...", flush=True)
            bt["memory"] = section_memory(args, bench_dir, mapping, args.memory_sizes, tree=other)
            ok &= bt["memory"]["ok"]
    if "quota" in wanted:
        qsource, gen_s = dry._files(bench_dir, args.quota_rows, args)
        print(
            f"[quota] {args.quota_records:,.0f} records/s and {args.quota_mib} MiB/s on the "
            f"stand-in, {args.quota_rows:,} rows, with client limits and adaptive ...",
            flush=True,
        )
        trees: list[Path | None] = [None, other] if bt else [None]
        runs: list[list[dict[str, Any]]] = [[] for _ in trees]
        for i in range(args.quota_repeat):  # the trees alternate: load falls on both alike
            for k, tree in enumerate(trees):
                if tree is not None or i:
                    which = "the baseline tree" if tree is not None else "this tree"
                    print(f"[quota] run {i + 1} with {which} ...", flush=True)
                runs[k].append(section_quota(args, bench_dir, mapping, qsource, tree=tree))
        results["quota"] = median_quota(runs[0])
        if bt:
            bt["quota"] = median_quota(runs[1])
        for q in (results["quota"], bt.get("quota", {})):
            if q.get("available"):
                ok &= q["client_limits"]["ok"] and q["adaptive"]["ok"]

    print_report(results)
    if bt:
        print_comparison(results, args.tolerance)
    results["self_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return finish(results, ok, args.json, "(records lost, duplicated or a run failed): see above")


if __name__ == "__main__":
    sys.exit(main())
