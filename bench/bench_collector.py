"""Benchmark of the Collector sink (``--sink moesif``): end to end against a plain-HTTP ceiling.

    python bench/bench_collector.py                          # 1,000,000 rows, 3 rounds
    python bench/bench_collector.py --rows 200000 --repeat 1 # a smoke run
    python bench/bench_collector.py --firehose --json .bench/bench_collector.json

In one run, on one input (`bench_dry_run`'s billing-like Parquet file, ``--rows`` rows, cached
in ``.bench/data/``):

* ``dry run`` (once, not measured): ``moesif-backfill run FILE --dry-run``: the exact records
  the send run builds. They are cut as the sink cuts them: ``--chunk-rows`` records per chunk,
  in shards of whole row groups as the run cuts the file (`pipeline.shards`), each chunk into
  bodies by `connectors.moesif_batching.plan_bodies` (the sender's own plan, at
  ``--moesif-batch-max-bytes``: one body per 10,000-row chunk by default), each body the JSON
  array of its records gzip'd at level 1 with isal (as the sender does). All built before the
  clock starts.
* ``ceiling``: those pre-built bodies POSTed with the standard library's ``http.client`` on
  ``--max-in-flight`` threads, one keep-alive connection each, with the sender's headers, to a
  fresh Collector stand-in: actions/s. Nothing but HTTP: the most the sink could do here.
* ``end to end``: ``moesif-backfill run FILE --sink moesif --moesif-url <stand-in> --no-prefect
  --max-in-flight N --checkpoint DIR`` (Parquet read, transform, batching, gzip, send,
  checkpoint) to a fresh stand-in: actions_sent / the summary's ``duration_s``, and its ratio
  to the ceiling (low by construction: the ceiling sends pre-built bodies; end to end / dry run
  is the figure to watch).
* ``dry run`` again in every round (``run FILE --dry-run``, same ``--chunk-rows``): rows /
  ``duration_s``, the transform without sending: the most end to end could reach with free
  sending. End to end / dry run is what sending costs the pipeline.
* ``--firehose`` (optional): `bench.py`'s ``ceiling`` (plain boto3, the first
  ``--firehose-ceiling-records`` records) and ``e2e`` (``--stream s``) sections on the same
  input, for the Firehose path's same ratio.

``--repeat N`` rounds, each a ceiling, an end-to-end run and a dry run (alternating, so load
falls on all alike); medians are printed with every run's figure and the 1-minute load average.

The stand-in (`tests.standins.collector`) runs in its own process (its own GIL), started fresh
for every measurement. By default with ``count_only``: it gunzips each body and collects its
``transaction_id``s with one regular expression instead of parsing and validating every action
(``--validating-standin`` for the full check; at ~8 us of stand-in CPU per action the full
check makes the 2-core machine measure the stand-in). Either way every run must deliver exactly
one action per row, each ``transaction_id`` once: otherwise exit status 1. The stand-in's CPU
per action is printed.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import shutil
import statistics
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import bench_dry_run as dry  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from bench_results import finish  # noqa: E402
from isal import igzip  # noqa: E402

import bench as fb  # noqa: E402
from connectors.moesif_batching import BATCH_PATH, batch_body, plan_bodies  # noqa: E402
from pipeline.shards import split_row_groups, target_rows  # noqa: E402

APP_ID = "bench-collector-app-id"  # the stand-in's id, not a secret
DEFAULT_BATCH_MAX_BYTES = 12_000_000
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Collector(fb.StandInProcess):
    """The Collector stand-in in its own process, on 127.0.0.1."""

    def __init__(self, *, count_only: bool) -> None:
        cmd = [sys.executable, "-m", "tests.standins.collector", "--port", "0"]
        if count_only:
            cmd.append("--count-only")
        env = dict(os.environ, MOESIF_APPLICATION_ID=APP_ID, PYTHONPATH=str(ROOT))
        super().__init__(cmd, "Collector stand-in", env)

    def stats(self) -> dict[str, Any]:
        with _NO_PROXY.open(self.url + "/stats", timeout=60) as response:
            result: dict[str, Any] = json.loads(response.read())
        return result


# --------------------------------------------------------------------------- inputs
def chunk_ranges(source: Path, rows: int, chunk_rows: int) -> list[tuple[int, int]]:
    """The [start, end) rows of every chunk the run sends: the file cut into shards of whole
    row groups (`pipeline.shards.split_row_groups`), each shard into `chunk_rows` chunks."""
    meta = pq.ParquetFile(source).metadata
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    bounds = [0]
    for a, b in split_row_groups(sizes, target_rows(chunk_rows)):
        bounds.append(bounds[-1] + sum(sizes[a:b]))
    if bounds[-1] != rows:
        raise SystemExit(f"{source}: {bounds[-1]:,} rows in its row groups, not {rows:,}")
    return [
        (c, min(c + chunk_rows, end))
        for start, end in itertools.pairwise(bounds)
        for c in range(start, end, chunk_rows)
    ]


def chunk_bodies(
    records: list[bytes], chunks: list[tuple[int, int]], batch_max_bytes: int
) -> list[tuple[int, bytes]]:
    """(actions, gzip body) of every request the sink makes for these records, in order."""
    bodies = []
    for c0, c1 in chunks:
        chunk = records[c0:c1]
        sizes = list(map(len, chunk))
        for s, e in plan_bodies(sizes, batch_max_bytes):
            body = igzip.compress(batch_body(chunk[s:e]), compresslevel=1)
            bodies.append((e - s, body))
    return bodies


def dry_run(
    args: argparse.Namespace, source: Path, mapping: Path, keep: bool = False
) -> tuple[list[bytes], dict[str, Any]]:
    """`run --dry-run` of `source`: its figures (rows / duration_s: the transform without
    sending) and, with `keep`, every record it wrote (one output file per input file)."""
    extra = ("--chunk-rows", str(args.chunk_rows))
    dr = dry.run_project(
        source, mapping, args.bench_dir, f"collector-{args.rows}", args.rows, extra=extra
    )
    records = fb.prebuilt_records(Path(dr["out_dir"]), args.rows + 1) if keep else []
    shutil.rmtree(dr["out_dir"], ignore_errors=True)
    dr["loadavg_1m"] = [dr["loadavg_1m_before"], dr["loadavg_1m_after"]]
    return records, dr


# --------------------------------------------------------------------------- measurements
def check_delivery(stats: dict[str, Any], rows: int) -> bool:
    return bool(
        stats["actions"] == rows
        and stats["unique_transaction_ids"] == rows
        and stats["requests"] == stats["accepted_requests"]
    )


def ceiling(bodies: list[tuple[int, bytes]], threads: int, count_only: bool) -> dict[str, Any]:
    """POST the pre-built bodies with http.client on `threads` keep-alive connections."""
    headers = {
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
        "Accept": "application/json",
        "X-Moesif-Application-Id": APP_ID,
    }
    with Collector(count_only=count_only) as standin:
        parts = urlsplit(standin.url)
        host, port = parts.hostname or "127.0.0.1", parts.port
        conns = [http.client.HTTPConnection(host, port, timeout=60) for _ in range(threads)]
        for conn in conns:
            conn.connect()

        # one connection per thread: thread k takes bodies k, k + threads, ... (a shared index
        # would balance better, but the bodies are alike and this needs no lock)
        def post_all(k: int) -> int:
            conn, sent = conns[k], 0
            for actions, body in bodies[k::threads]:
                conn.request("POST", BATCH_PATH, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                if response.status != 201:
                    raise RuntimeError(f"the stand-in answered {response.status}")
                sent += actions
            return sent

        load = os.getloadavg()[0]
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            sent = sum(pool.map(post_all, range(threads)))
        seconds = time.perf_counter() - t0
        client_cpu = time.process_time() - cpu0
        for conn in conns:
            conn.close()
        stats = standin.stats()
        standin_cpu = standin.cpu()
    return {
        "actions": sent,
        "requests": len(bodies),
        "seconds": round(seconds, 3),
        "actions_per_s": round(sent / seconds, 1),
        "client_cpu_us_per_action": round(client_cpu / sent * 1e6, 2),
        "standin_cpu_us_per_action": round(standin_cpu / sent * 1e6, 2),
        "ok": check_delivery(stats, sent),
        "loadavg_1m": [load, os.getloadavg()[0]],
    }


def end_to_end(  # noqa: PLR0917 - three call sites, named by position
    args: argparse.Namespace,
    source: Path,
    mapping: Path,
    tag: str,
    count_only: bool,
    tree: Path | None = None,
) -> dict[str, Any]:
    ckpt = args.bench_dir / "out" / f"ckpt-{tag}"
    shutil.rmtree(ckpt, ignore_errors=True)
    with Collector(count_only=count_only) as standin:
        argv = [
            "run", str(source), "--mapping", str(mapping),
            "--sink", "moesif", "--moesif-url", standin.url, "--no-prefect",
            "--checkpoint", str(ckpt),
            "--max-in-flight", str(args.max_in_flight),
            "--chunk-rows", str(args.chunk_rows),
            "--allow-older-than-30-days", "--quiet",
        ]  # fmt: skip
        if args.batch_max_bytes != DEFAULT_BATCH_MAX_BYTES:
            argv += ["--moesif-batch-max-bytes", str(args.batch_max_bytes)]
        os.environ["MOESIF_APPLICATION_ID"] = APP_ID  # run_cli's child inherits it
        run = fb.run_cli(argv, args.bench_dir, tag, tree)
        stats = standin.stats()
        run["standin_cpu_s"] = round(standin.cpu(), 2)
    shutil.rmtree(ckpt, ignore_errors=True)
    summary = run.get("summary")
    if run["exit_code"] != 0 or summary is None:
        run.update(ok=False, error_tail=fb.tail(run["log"]))
        return run
    sent = summary["actions_sent"]
    run.update(
        actions_sent=sent,
        duration_s=summary["duration_s"],
        actions_per_s=round(sent / summary["duration_s"], 1),
        requests=stats["requests"],
        standin_cpu_us_per_action=round(run["standin_cpu_s"] / max(sent, 1) * 1e6, 2),
        ok=sent == args.rows and check_delivery(stats, args.rows),
    )
    return run


def firehose_pair(
    args: argparse.Namespace, source: Path, mapping: Path, records: list[bytes]
) -> dict[str, Any]:
    """bench.py's ceiling and e2e sections on the same input: the Firehose path's ratio."""
    fargs = argparse.Namespace(concurrency=args.max_in_flight)
    ce = fb.section_ceiling(records[: args.firehose_ceiling_records], args.max_in_flight)
    e2e = fb.section_e2e(fargs, args.bench_dir, mapping, source, args.rows, ["s"], "coll-fh")
    result = {"ceiling": ce, "e2e": e2e, "ok": bool(ce["stored_ok"] and e2e["ok"])}
    if result["ok"]:
        result["share"] = round(e2e["actions_per_s"] / ce["records_per_s"], 3)
    return result


# --------------------------------------------------------------------------- report
def med(values: list[float]) -> float:
    return float(statistics.median(values))


def print_report(r: dict[str, Any]) -> None:
    ce, e2e = r["ceiling_runs"], r["e2e_runs"]
    rows: list[tuple[str, str]] = []
    drs = r["dryrun_runs"]
    if drs:
        rates = [x["rows_per_s_pipeline"] for x in drs]
        rows.append((
            "dry run (no sending)",
            f"{med(rates):>10,.0f} rows/s median (the transform alone: the most end to end can "
            f"reach); runs " + ", ".join(f"{x:,.0f}" for x in rates),
        ))  # fmt: skip
    if ce and all("actions_per_s" in x for x in ce):
        rates = [x["actions_per_s"] for x in ce]
        rows.append((
            "ceiling (http.client)",
            f"{med(rates):>10,.0f} actions/s median ({r['requests']:,} pre-built gzip bodies, "
            f"{r['args']['max_in_flight']} threads; client "
            f"{med([x['client_cpu_us_per_action'] for x in ce])} us/action, stand-in "
            f"{med([x['standin_cpu_us_per_action'] for x in ce])} us/action CPU); runs "
            + ", ".join(f"{x:,.0f}" for x in rates),
        ))  # fmt: skip
    ok_e2e = [x for x in e2e if "actions_per_s" in x]
    if ok_e2e:
        rates = [x["actions_per_s"] for x in ok_e2e]
        line = f"{med(rates):>10,.0f} actions/s median"
        if "share" in r:
            line += f" = {r['share']:.0%} of the ceiling"
        line += (
            f"; {ok_e2e[0]['actions_sent']:,} actions in {ok_e2e[0]['requests']:,} requests, "
            f"CLI CPU {med([x['cpu_s'] for x in ok_e2e])} s, stand-in "
            f"{med([x['standin_cpu_us_per_action'] for x in ok_e2e])} us/action; runs "
            + ", ".join(f"{x:,.0f}" for x in rates)
        )
        rows.append(("end to end (--sink moesif)", line))
    for x in e2e:
        if "actions_per_s" not in x:
            rows.append(("end to end FAILED", f"exit {x['exit_code']}, log {x['log']}"))
    if "shares" in r:
        rows.append(("ratio per round", ", ".join(f"{s:.0%}" for s in r["shares"])))
        rows.append((
            "end to end / dry run",
            f"{r['share_of_dryrun']:.0%} (medians: what sending costs the pipeline)",
        ))  # fmt: skip
    base = [x for x in r.get("baseline_e2e_runs", []) if "actions_per_s" in x]
    if base and ok_e2e:
        rates = [x["actions_per_s"] for x in base]
        mine = med([x["actions_per_s"] for x in ok_e2e])
        r["vs_baseline_tree"] = round(mine / med(rates), 3)
        rows.append((
            f"baseline tree ({r['baseline_worktree']['commit']})",
            f"{med(rates):>10,.0f} actions/s median; this tree / it = {r['vs_baseline_tree']:.2f}x;"
            " runs " + ", ".join(f"{x:,.0f}" for x in rates),
        ))  # fmt: skip
    loads_b = [x["loadavg_1m"][0] for x in r.get("baseline_e2e_runs", [])]
    fh = r.get("firehose")
    if fh:
        if fh["ok"]:
            rows.append((
                "Firehose path (bench.py)",
                f"ceiling {fh['ceiling']['records_per_s']:,.0f} records/s, end to end "
                f"{fh['e2e']['actions_per_s']:,.0f} actions/s = {fh['share']:.0%}",
            ))  # fmt: skip
        else:
            rows.append(("Firehose path (bench.py)", "FAILED: see the JSON"))
    loads = [x["loadavg_1m"][0] for x in [*ce, *e2e, *drs]] + loads_b
    rows.append(("load average (1 min) at starts", ", ".join(f"{x:.2f}" for x in loads)))
    width = max(len(k) for k, _ in rows)
    print("\nresults")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    print(f"  {'machine':<{width}}  {os.cpu_count()} CPUs, load average {os.getloadavg()}")


# --------------------------------------------------------------------------- main
def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="rows of the input")
    p.add_argument("--repeat", type=int, default=3, help="rounds of ceiling + end to end")
    p.add_argument("--max-in-flight", type=int, default=8, help="sender threads (the CLI's)")
    p.add_argument("--chunk-rows", type=int, default=10_000, help="the CLI's --chunk-rows")
    p.add_argument("--batch-max-bytes", type=int, default=DEFAULT_BATCH_MAX_BYTES)
    p.add_argument(
        "--validating-standin",
        action="store_true",
        help="the stand-in parses and validates every action (slower: it may be the limit)",
    )
    p.add_argument("--firehose", action="store_true", help="also bench.py's ceiling and e2e")
    p.add_argument("--firehose-ceiling-records", type=int, default=500_000)
    p.add_argument("--row-group-rows", type=int, default=128_000)
    p.add_argument("--seed", type=int, default=20261128)
    p.add_argument("--bench-dir", type=Path, default=ROOT / ".bench")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument(
        "--baseline-worktree",
        type=Path,
        help="also run the end to end of this checkout's CLI in every round (after this one's): "
        "the ratio of the medians",
    )
    args = p.parse_args()
    if args.baseline_worktree:
        args.baseline_worktree = args.baseline_worktree.resolve()
        if not (args.baseline_worktree / "moesif_backfill" / "cli.py").is_file():
            p.error(f"{args.baseline_worktree} is not a moesif-backfill checkout")
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    args.bench_dir = args.bench_dir.resolve()
    return args


def main() -> int:  # noqa: PLR0915 - one linear script
    args = parse_args()
    os.environ.update(fb.aws_env(args.bench_dir))  # the Firehose ceiling's dummy keys
    (args.bench_dir / "out").mkdir(parents=True, exist_ok=True)
    mapping = args.bench_dir / "mapping.yaml"
    mapping.write_text(dry.MAPPING_YAML)
    count_only = not args.validating_standin
    results: dict[str, Any] = {
        "args": {k: v for k, v in vars(args).items() if isinstance(v, int | float | str)},
        "count_only_standin": count_only,
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": fb.commit_of(ROOT),
    }
    source, gen_s = dry._files(args.bench_dir, args.rows, args)
    print(
        f"input: {source} ({args.rows:,} rows" + (f", generated in {gen_s:.0f}s)" if gen_s else ")")
    )
    print("[dry run] the records the send run builds (not measured) ...", flush=True)
    records, dr = dry_run(args, source, mapping, keep=True)
    results["dryrun"] = dr
    ok = len(records) == args.rows
    chunks = chunk_ranges(source, args.rows, args.chunk_rows)
    bodies = chunk_bodies(records, chunks, args.batch_max_bytes)
    results["requests"] = len(bodies)
    print(
        f"  {len(records):,} records (dry run {dr['rows_per_s_pipeline']:,.0f} rows/s, load "
        f"{dr['loadavg_1m_before']:.2f}), {len(bodies):,} bodies "
        f"({sum(len(b) for _, b in bodies) / 2**20:.1f} MiB gzip'd)",
        flush=True,
    )
    if args.firehose:
        print("[firehose] bench.py's ceiling and e2e sections ...", flush=True)
        results["firehose"] = firehose_pair(args, source, mapping, records)
        ok &= results["firehose"]["ok"]
    del records
    results["ceiling_runs"], results["e2e_runs"], shares = [], [], []
    results["dryrun_runs"] = []
    other: Path | None = args.baseline_worktree
    if other is not None:
        results["baseline_worktree"] = {"path": str(other), "commit": fb.commit_of(other)}
        results["baseline_e2e_runs"] = []
    for i in range(args.repeat):
        print(
            f"[round {i + 1}/{args.repeat}] ceiling ... (load {os.getloadavg()[0]:.2f})", flush=True
        )
        ce = ceiling(bodies, args.max_in_flight, count_only)
        results["ceiling_runs"].append(ce)
        ok &= ce["ok"]
        print(f"  {ce['actions_per_s']:,.0f} actions/s; end to end ...", flush=True)
        e2e = end_to_end(args, source, mapping, f"collector-e2e-{i}", count_only)
        results["e2e_runs"].append(e2e)
        ok &= e2e["ok"]
        if "actions_per_s" in e2e:
            shares.append(e2e["actions_per_s"] / ce["actions_per_s"])
            print(f"  {e2e['actions_per_s']:,.0f} actions/s = {shares[-1]:.0%}", flush=True)
        print("  dry run ...", flush=True)
        results["dryrun_runs"].append(dry_run(args, source, mapping)[1])
        if other is not None:
            print(f"  end to end with the baseline tree {other} ...", flush=True)
            be = end_to_end(args, source, mapping, f"collector-e2e-base-{i}", count_only, other)
            results["baseline_e2e_runs"].append(be)
            ok &= be["ok"]
            if "actions_per_s" in be:
                print(f"  {be['actions_per_s']:,.0f} actions/s", flush=True)
    if shares:
        results["shares"] = shares
        ce_med = med([x["actions_per_s"] for x in results["ceiling_runs"]])
        e2e_med = med([x["actions_per_s"] for x in results["e2e_runs"] if "actions_per_s" in x])
        results["ceiling_actions_per_s"], results["e2e_actions_per_s"] = ce_med, e2e_med
        results["share"] = round(e2e_med / ce_med, 3)
        dr_med = med([x["rows_per_s_pipeline"] for x in results["dryrun_runs"]])
        results["dryrun_rows_per_s"] = dr_med
        results["share_of_dryrun"] = round(e2e_med / dr_med, 3)
    print_report(results)
    return finish(results, ok, args.json, "(actions lost, duplicated or a run failed): see above")


if __name__ == "__main__":
    sys.exit(main())
