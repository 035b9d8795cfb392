"""bench.py's `--baseline-worktree` report: this checkout's figures against another checkout's
(e.g. b96172b), both measured by the same bench.py invocation on the same inputs, stand-in and
machine.

Compared (issue 11: "no worse than b96172b"):

* dry-run marginal rate: rows / the summary's ``duration_s`` (the pipeline, without the
  process start-up): ratio this / baseline, no worse when >= 1 - tolerance;
* peak RSS of ``validate`` at each memory size, and its growth from the smallest to the largest
  size (flat memory): no worse when this growth <= the baseline's x (1 + tolerance);
* quota adherence, with client limits and adaptive: the share of the quota achieved, no worse
  when >= the baseline's x (1 - tolerance); the share of throttled calls, no worse when <= the
  baseline's + tolerance (absolute). With ``--quota-repeat N`` the medians of N runs per tree
  (the adaptive share varies from run to run on a loaded machine: 75% and 98% seen).

``tolerance`` (``--tolerance``, default 0.05) absorbs run-to-run noise on a shared machine; the
raw figures of both trees are printed and written to the JSON, so a stricter reading is possible.
"""

from __future__ import annotations

from typing import Any


def _yes(flag: bool) -> str:
    return "yes" if flag else "NO"


def _runs(m: dict[str, Any], b: dict[str, Any]) -> str:
    """Every run's share, when --quota-repeat ran more than one (the medians are compared)."""
    mine, theirs = m.get("share_of_quota_all_runs") or [], b.get("share_of_quota_all_runs") or []
    if len(mine) < 2:
        return ""
    return (
        "; runs "
        + ", ".join(f"{x:.1%}" for x in mine)
        + " vs "
        + ", ".join(f"{x:.1%}" for x in theirs)
    )


def compare(r: dict[str, Any], tolerance: float) -> list[tuple[str, str]]:
    """Rows of the comparison table; verdicts also stored in r["baseline_worktree"]["verdicts"]."""
    bt = r["baseline_worktree"]
    verdicts: dict[str, bool] = {}
    rows: list[tuple[str, str]] = []
    dr, bdr = r.get("dryrun"), bt.get("dryrun")
    if dr and bdr:
        ratio = dr["rows_per_s_pipeline"] / bdr["rows_per_s_pipeline"]
        verdicts["dryrun_rate"] = ratio >= 1 - tolerance
        bt["dryrun_rate_ratio"] = round(ratio, 3)
        rows.append(
            (
                "dry-run marginal rate",
                f"{dr['rows_per_s_pipeline']:,.0f} vs {bdr['rows_per_s_pipeline']:,.0f} rows/s "
                f"= {ratio:.2f}x (no worse: {_yes(verdicts['dryrun_rate'])}); wall "
                f"{dr['wall_s']:.1f}s vs {bdr['wall_s']:.1f}s, start-up {dr['startup_s']:.1f}s "
                f"vs {bdr['startup_s']:.1f}s",
            )
        )
    mem, bmem = r.get("memory"), bt.get("memory")
    if mem and bmem:
        sizes = ", ".join(
            f"{m['rows']:,} rows {m['peak_rss_mb']:.0f} vs {b['peak_rss_mb']:.0f} MB"
            for m, b in zip(mem["runs"], bmem["runs"], strict=True)
        )
        rows.append(("peak RSS (validate)", sizes))
        g, bg = mem["growth_largest_vs_smallest"], bmem["growth_largest_vs_smallest"]
        if g is not None and bg is not None:
            verdicts["memory_growth"] = g <= bg * (1 + tolerance)
            rows.append(
                (
                    "memory growth largest/smallest",
                    f"{g:.3f} vs {bg:.3f} (no worse: {_yes(verdicts['memory_growth'])})",
                )
            )
    q, bq = r.get("quota"), bt.get("quota")
    if q and bq and q.get("available") and bq.get("available"):
        for mode in ("client_limits", "adaptive"):
            m, b = q[mode], bq[mode]
            share_ok = m["share_of_quota"] >= b["share_of_quota"] * (1 - tolerance)
            thr, bthr = m["throttled_share"] or 0.0, b["throttled_share"] or 0.0
            thr_ok = thr <= bthr + tolerance
            verdicts[f"quota_{mode}"] = share_ok and thr_ok
            rows.append(
                (
                    f"quota, {mode.replace('_', ' ')}",
                    f"{m['share_of_quota']:.1%} vs {b['share_of_quota']:.1%} of the quota, "
                    f"throttled calls {thr:.2%} vs {bthr:.2%} "
                    f"(no worse: {_yes(verdicts[f'quota_{mode}'])})" + _runs(m, b),
                )
            )
    bt["verdicts"] = verdicts
    bt["tolerance"] = tolerance
    return rows


def print_comparison(r: dict[str, Any], tolerance: float) -> None:
    bt = r["baseline_worktree"]
    rows = compare(r, tolerance)
    if not rows:
        return
    width = max(len(k) for k, _ in rows)
    print(
        f"\nthis tree ({bt['this_commit']}) vs baseline tree {bt['path']} ({bt['commit']}), "
        f"same run; tolerance {tolerance:.0%}"
    )
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
