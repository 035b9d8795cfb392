"""Start-up benchmark of issue 11: `--help`, `validate` and `run --dry-run` of a 2,000-row CSV.

    python bench/bench_cli.py                                   # this checkout, 3 repeats
    python bench/bench_cli.py --repeat 5 --baseline-worktree /work/wt/b961 --json .bench/cli.json

Each measured invocation is a fresh child process of the console script (`moesif-backfill`,
next to this interpreter) with:

* a fresh, empty temporary ``PREFECT_HOME`` (no database, no profiles: a first run);
* every ``PREFECT_*`` variable of the caller removed (``PREFECT_API_URL`` among them: no Prefect
  API is reachable), then ``PREFECT_SERVER_ANALYTICS_ENABLED=false``;
* ``PYTHONPATH`` set to the checkout being measured (this one, or ``--baseline-worktree``), so
  the same interpreter and packages run either tree's code;
* a fresh temporary working directory (its default checkpoint location starts empty);
* stdout and stderr to a log file, not a pipe: the time is the CLI process's, from start to
  exit, and a helper process it leaves behind cannot stretch it.

Wall time per invocation: median, min and max over ``--repeat`` runs, after ``--warmup``
unmeasured runs of each command per tree (the OS file cache and ``__pycache__``; not Prefect:
each run still gets an empty ``PREFECT_HOME``). With a baseline, the two trees alternate run by
run, so machine load falls on both alike; the ratio printed is this tree / baseline (below 1 =
faster).

Input: a CSV shaped like real exports (leading-zero company ids, 20-digit user ids, a few
missing, ISO times in mixed offsets and precisions within the last 20 days, amounts as
written), with the mapping of ``examples/mapping.yaml``; regenerated every run, in a temporary
directory. A run counts only if it exits 0 (``validate``, ``run``) and the dry run wrote one
record per row; a failed run is a correctness failure (exit status 1). The issue's targets
(median wall) are printed with PASS/FAIL; a missed target does not change the exit status.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_results import finish

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ("help", "validate", "dry-run")
TARGETS_S = {"help": 0.3, "validate": 1.5, "dry-run": 2.0}
OFFSETS = ("Z", "+00:00", "-05:00", "+05:30", "+09:00", "-08:00", "-03:30", "+01:00")
CURRENCIES = ("USD", "USD", "USD", "EUR", "GBP", "CAD")
PLANS = ("starter", "growth", "enterprise", "pay-as-you-go")


# --------------------------------------------------------------------------- input
def write_csv(path: Path, rows: int, seed: int) -> None:
    """A billing export as people write them: text ids with leading zeros, 20-digit ids,
    times with mixed offsets and precisions, amounts with their exact digits."""
    rng = random.Random(seed)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    lines = ["invoice_line_id,customer_id,user_id,sub_id,created_at,amount,currency,plan,quantity"]
    for i in range(rows):
        customer = f"{rng.randrange(1, 5000):06d}"  # 000123: must stay text
        user = "" if rng.random() < 0.1 else str(rng.randrange(10**19, 10**20))  # 20 digits
        offset = OFFSETS[i % len(OFFSETS)]
        shift = dt.timedelta()
        if offset != "Z":
            sign = -1 if offset[0] == "-" else 1
            shift = sign * dt.timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6]))
        moment = now - dt.timedelta(seconds=rng.randrange(60, 20 * 86_400))
        local = moment + shift  # the same instant written in that offset's local time
        stamp = local.strftime("%Y-%m-%dT%H:%M:%S")
        if i % 3 == 1:
            stamp += f".{rng.randrange(1000):03d}"
        elif i % 3 == 2:
            stamp += f".{rng.randrange(10**6):06d}"
        amount = f"{rng.randrange(1, 500_000)}.{rng.randrange(100):02d}"
        lines.append(
            f"il_{i + 1:010d},{customer},{user},sub_{customer},{stamp}{offset},{amount},"
            f"{rng.choice(CURRENCIES)},{rng.choice(PLANS)},{rng.randrange(1, 51)}"
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- runs
def cli_script() -> str:
    here = Path(sys.executable).parent / "moesif-backfill"
    return str(here) if here.exists() else (shutil.which("moesif-backfill") or "moesif-backfill")


def child_env(tree: Path, prefect_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(prefect_home)
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env["PYTHONPATH"] = str(tree)
    env.pop("PYTHONSTARTUP", None)
    return env


def argv_for(command: str, csv: Path, mapping: Path, work: Path) -> list[str]:
    if command == "help":
        return ["--help"]
    if command == "validate":
        return ["validate", str(csv), "--mapping", str(mapping)]
    return [
        "run",
        str(csv),
        "--mapping",
        str(mapping),
        "--dry-run",
        "--out",
        str(work / "out"),
        "--summary-json",
        str(work / "summary.json"),
        "--quiet",
    ]


def dry_run_records(out: Path) -> int:
    count = 0
    for path in out.rglob("*.ndjson.gz"):
        with gzip.open(path, "rb") as fh:
            count += sum(1 for _ in fh)
    return count


def run_once(tree: Path, command: str, csv: Path, mapping: Path, rows: int) -> dict[str, Any]:
    """One invocation in a fresh working directory with a fresh PREFECT_HOME."""
    with tempfile.TemporaryDirectory(prefix="bench-cli-", ignore_cleanup_errors=True) as tmp:
        work = Path(tmp)
        home = work / "prefect-home"
        home.mkdir()
        cmd = [cli_script(), *argv_for(command, csv, mapping, work)]
        log = work / "log.txt"
        t0 = time.perf_counter()
        with log.open("wb") as fh:
            proc = subprocess.Popen(
                cmd,
                cwd=work,
                env=child_env(tree, home),
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
            _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        text = log.read_text(errors="replace")
        result: dict[str, Any] = {
            "wall_s": round(wall, 3),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
            "max_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "exit_code": code,
        }
        problem = None
        if code != 0:
            problem = f"exit {code}"
        elif command == "help" and "usage:" not in text:
            problem = "no usage text"
        elif command == "dry-run":
            written = dry_run_records(work / "out")
            result["records"] = written
            if written != rows:
                problem = f"{written} records written for {rows} rows"
        if problem:
            result["problem"] = problem
            result["log_tail"] = text[-2000:]
        return result


def stats(runs: list[dict[str, Any]]) -> dict[str, Any]:
    walls = [r["wall_s"] for r in runs]
    return {
        "median_s": round(statistics.median(walls), 3),
        "min_s": round(min(walls), 3),
        "max_s": round(max(walls), 3),
        "median_cpu_s": round(statistics.median(r["cpu_s"] for r in runs), 3),
        "failed": sum("problem" in r for r in runs),
        "runs": runs,
    }


# --------------------------------------------------------------------------- main
def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2000, help="CSV rows (default 2000)")
    p.add_argument("--repeat", type=int, default=3, help="measured runs per command and tree")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured runs first (default 1)")
    p.add_argument("--commands", default=",".join(COMMANDS), help="subset of help,validate,dry-run")
    p.add_argument("--tree", type=Path, default=ROOT, help="checkout to measure (default: this)")
    p.add_argument("--baseline-worktree", type=Path, help="also measure this checkout; ratios")
    p.add_argument("--seed", type=int, default=20261205)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    args.command_list = [c.strip() for c in args.commands.split(",") if c.strip()]
    unknown = set(args.command_list) - set(COMMANDS)
    if unknown:
        p.error(f"unknown command(s) {sorted(unknown)}; choose from {', '.join(COMMANDS)}")
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    for tree in filter(None, (args.tree, args.baseline_worktree)):
        if not (tree / "moesif_backfill" / "cli.py").is_file():
            p.error(f"{tree} is not a moesif-backfill checkout (no moesif_backfill/cli.py)")
    return args


def fmt(s: dict[str, Any]) -> str:
    text = f"median {s['median_s']:6.2f}s  (min {s['min_s']:.2f}, max {s['max_s']:.2f}; "
    text += f"CPU {s['median_cpu_s']:.2f}s)"
    return text + (f"  {s['failed']} FAILED" if s["failed"] else "")


def report(args: argparse.Namespace, results: dict[str, Any]) -> bool:
    trees = results["trees"]
    print(f"\nresults ({args.rows:,}-row CSV, {args.repeat} run(s) each, fresh PREFECT_HOME each)")
    ok = True
    width = max(len(c) for c in args.command_list) + 2
    for command in args.command_list:
        cur = trees["current"][command]
        ok &= cur["failed"] == 0
        print(f"  {command:<{width}}this tree  {fmt(cur)}")
        if "baseline" in trees:
            base = trees["baseline"][command]
            ok &= base["failed"] == 0
            ratio = cur["median_s"] / base["median_s"]
            results.setdefault("ratios", {})[command] = round(ratio, 4)
            print(f"  {'':<{width}}baseline   {fmt(base)}")
            print(
                f"  {'':<{width}}ratio this/baseline {ratio:.3f} "
                f"(speed-up {base['median_s'] / cur['median_s']:.2f}x)"
            )
    print("\ntargets (issue 11; median wall of this tree)")
    verdicts = {}
    for command in args.command_list:
        target = TARGETS_S[command]
        median = trees["current"][command]["median_s"]
        verdicts[command] = median <= target
        label = {"help": "--help", "validate": "validate", "dry-run": "run --dry-run"}[command]
        print(
            f"  {label:<15} <= {target:.1f}s: {median:6.2f}s  "
            + ("PASS" if verdicts[command] else "FAIL")
        )
    results["targets_s"] = {c: TARGETS_S[c] for c in args.command_list}
    results["pass"] = verdicts
    print(f"\nmachine: {os.cpu_count()} CPUs, load average {os.getloadavg()}")
    for tree_name in trees:
        for command in args.command_list:
            for r in trees[tree_name][command]["runs"]:
                if "problem" in r:
                    print(f"\n{tree_name} {command} FAILED ({r['problem']}):\n{r['log_tail']}")
                    break
    return ok


def main() -> int:
    args = parse_args()
    trees = {"current": args.tree.resolve()}
    if args.baseline_worktree:
        trees["baseline"] = args.baseline_worktree.resolve()
    results: dict[str, Any] = {
        "rows": args.rows,
        "repeat": args.repeat,
        "warmup": args.warmup,
        "paths": {k: str(v) for k, v in trees.items()},
        "cli": cli_script(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg_before": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory(prefix="bench-cli-input-") as tmp:
        csv, mapping = Path(tmp) / "billing.csv", Path(tmp) / "mapping.yaml"
        write_csv(csv, args.rows, args.seed)
        shutil.copyfile(ROOT / "examples" / "mapping.yaml", mapping)
        print(f"input: {args.rows:,}-row CSV ({csv.stat().st_size:,} bytes); trees: {trees}")
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {
            name: {c: [] for c in args.command_list} for name in trees
        }
        warmup_failures: list[dict[str, Any]] = []
        for i in range(args.warmup + args.repeat):
            measured = i >= args.warmup
            for command in args.command_list:
                for name, tree in trees.items():
                    r = run_once(tree, command, csv, mapping, args.rows)
                    tag = f"run {i - args.warmup + 1}" if measured else "warm-up"
                    print(
                        f"  {tag:<8} {name:<8} {command:<9} {r['wall_s']:7.2f}s"
                        + (f"  {r['problem']}" if "problem" in r else ""),
                        flush=True,
                    )
                    if measured:
                        runs[name][command].append(r)
                    elif "problem" in r:
                        warmup_failures.append({"tree": name, "command": command, **r})
    results["trees"] = {name: {c: stats(rs) for c, rs in per.items()} for name, per in runs.items()}
    results["loadavg_after"] = os.getloadavg()
    results["warmup_failures"] = warmup_failures
    ok = report(args, results) and not warmup_failures
    for failure in warmup_failures:
        print(f"\nwarm-up {failure['tree']} {failure['command']} FAILED ({failure['problem']})")
    return finish(results, ok, args.json, "(a run exited non-zero or wrote the wrong records)")


if __name__ == "__main__":
    sys.exit(main())
