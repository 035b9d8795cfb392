"""Command line: `moesif-backfill status --job JOB`: what a job's checkpoint says, read-only.

Shows the job, its checkpoint location, per input file the rows delivered (sent), rejected and
pending (from the shard checkpoints ``<job>.shard-<sid>`` and the job's ``shards.json``,
pipeline/layout.py), the holder of an S3 lease (the job's or a shard's, when one is live), and
the watermark of a nightly job (pipeline/nightly_state.py). `--json` prints one JSON document.

Reads only: takes no lock and writes nothing, so it may run beside a run of the job. Never
imports Prefect (unless --aws-credentials-block names a block); never prints a secret (the
checkpoint's location is shown as the store describes it, without endpoint or credentials).
Exit codes: 0 the job has a checkpoint there, 2 it has none (or a flag is invalid), 1 the
checkpoint could not be read.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from moesif_backfill.cli_flags import field_flag, given
from moesif_backfill.cli_progress import add_log_format_flag
from pipeline.settings import RunSettings

_RUN = RunSettings.model_fields


class StatusSettings(BaseModel):
    """What `status` needs: the job and where its checkpoint is (defaults: RunSettings')."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    job: str = Field(min_length=1)
    checkpoint: str = _RUN["checkpoint"].default
    region: str | None = None
    s3_endpoint_url: str | None = None
    aws_credentials_block: str | None = Field(default=None, min_length=1)
    lease_seconds: float = _RUN["lease_seconds"].default


def add_status_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `status` to the subparsers `sub` of the CLI."""
    p = sub.add_parser(
        "status",
        help="show a job's checkpoint: per file delivered, rejected, pending; lease; watermark",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    field_flag(p, RunSettings, "job", required=True, help="the job name (as `run` printed it)")
    field_flag(
        p, RunSettings, "checkpoint", help="checkpoint location: a directory or s3://bucket/prefix/"
    )
    field_flag(p, RunSettings, "region", help="AWS region (default: boto3's configuration)")
    field_flag(p, RunSettings, "s3_endpoint_url", help="S3 endpoint URL for s3:// checkpoints")
    field_flag(
        p,
        RunSettings,
        "aws_credentials_block",
        metavar="NAME",
        help="use the AWS credentials of this Prefect AwsCredentials block (prefect-aws)",
    )
    p.add_argument("--json", action="store_true", help="print the status as one JSON document")
    add_log_format_flag(p, progress=False)


def _lease_holder(store: Any, job: str) -> dict[str, Any] | None:
    """The live lease of `job` in an S3 store (None: no lease, expired, or not S3)."""
    from connectors.checkpoint_s3 import S3CheckpointStore  # noqa: PLC0415
    from connectors.checkpoint_s3_lease import LEASE_NAME, LeaseHolder, wall_now  # noqa: PLC0415

    if not isinstance(store, S3CheckpointStore):
        return None
    found = store.objects.get(store.object_key(job, LEASE_NAME))
    if found is None:
        return None
    holder = LeaseHolder.parse(found[0], found[2], store.lease_seconds)
    if holder.expired(wall_now()):
        return None
    return {
        "job": job,
        "host": holder.host,
        "pid": holder.pid,
        "owner": holder.owner[:8] if holder.owner else None,
        "expires_at": holder.expires_at.isoformat(timespec="seconds"),
    }


def _file_status(store: Any, job: str, key: str, layout: Any) -> tuple[dict[str, Any], list[str]]:
    """One file's row: its shards' checkpoints summed (the layout's totals where a shard has
    none yet); and the shard jobs, for their leases."""
    shards = layout.shards_of(key)
    sent = rejected = outside = complete = 0
    rows_known = all(s.rows is not None for s in shards)
    total = sum(s.rows or 0 for s in shards) if rows_known else None
    for shard in shards:
        state = store.load(shard.job(job))
        prog = state.files.get(key) if state is not None else None
        if prog is not None:
            sent += prog.rows_sent
            rejected += prog.rows_rejected
            outside += prog.rows_outside_window
            complete += prog.complete
            continue
        t = layout.shards.get(shard.sid)
        if t is not None:
            sent, rejected, outside = (
                sent + t.rows_sent,
                rejected + t.rows_rejected,
                outside + t.rows_outside_window,
            )
            complete += t.complete
    done = complete == len(shards)
    pending: int | None
    if done:
        pending = 0
    elif total is not None:
        pending = max(total - sent - rejected - outside, 0)
    else:
        pending = None  # not known before the file is read to its end (CSV, NDJSON)
    row = {
        "file": key,
        "complete": done,
        "shards": len(shards),
        "shards_complete": complete,
        "rows_sent": sent,
        "rows_rejected": rejected,
        "rows_outside_window": outside,
        "rows_pending": pending,
        "rows_total": total if not done else sent + rejected + outside,
    }
    return row, [s.job(job) for s in shards]


def job_status(s: StatusSettings) -> dict[str, Any]:
    """The status document of job `s.job` (ConfigError when the location holds no such job)."""
    from connectors.checkpoint import validate_job_name  # noqa: PLC0415
    from moesif_backfill.errors import ConfigError  # noqa: PLC0415
    from pipeline.layout import load_layout  # noqa: PLC0415
    from pipeline.nightly_state import load_watermark  # noqa: PLC0415
    from pipeline.resources import checkpoint_store, open_aws  # noqa: PLC0415

    validate_job_name(s.job)
    store = checkpoint_store(s, open_aws(s))
    state = store.load(s.job)
    layout = load_layout(store, s.job)
    watermark = load_watermark(store, s.job)
    files, leases = [], []
    jobs = [s.job]
    for key in sorted(layout.files):
        row, shard_jobs = _file_status(store, s.job, key, layout)
        files.append(row)
        jobs += shard_jobs
    if state is not None:  # a checkpoint of the single-process layout (before shards)
        for key, prog in sorted(state.files.items()):
            if key not in layout.files:
                files.append(
                    {
                        "file": key,
                        "complete": prog.complete,
                        "shards": 1,
                        "shards_complete": int(prog.complete),
                        "rows_sent": prog.rows_sent,
                        "rows_rejected": prog.rows_rejected,
                        "rows_outside_window": prog.rows_outside_window,
                        "rows_pending": 0 if prog.complete else None,
                        "rows_total": None,
                    }
                )
    if state is None and not layout.files and watermark is None:
        raise ConfigError(
            f"no checkpoint of job {s.job!r} at {store.describe()}; check --job (as `run` "
            "printed it) and --checkpoint (and --s3-endpoint-url for s3://)"
        )
    for job in jobs:
        holder = _lease_holder(store, job)
        if holder is not None:
            leases.append(holder)
    totals = {
        k: sum(f[k] for f in files) for k in ("rows_sent", "rows_rejected", "rows_outside_window")
    }
    pending = [f["rows_pending"] for f in files]
    return {
        "job": s.job,
        "checkpoint": store.describe(),
        "updated_at": state.updated_at if state is not None else None,
        "files_total": len(files),
        "files_complete": sum(f["complete"] for f in files),
        **totals,
        "rows_pending": None if None in pending else sum(p or 0 for p in pending),
        "complete": bool(files) and all(f["complete"] for f in files),
        "files": files,
        "leases": leases,
        "nightly_watermark": watermark.model_dump(mode="json") if watermark else None,
    }


def _n(v: int | None) -> str:
    return "?" if v is None else f"{v:,}"


def status_text(doc: dict[str, Any]) -> str:
    """The status document as text (one line per file)."""
    state = "complete" if doc["complete"] else "not complete"
    lines = [
        f"job {doc['job']}: {state} ({doc['files_complete']} of {doc['files_total']} file(s))",
        f"  checkpoint  {doc['checkpoint']}"
        + (f"  (updated {doc['updated_at']})" if doc["updated_at"] else ""),
        f"  delivered {_n(doc['rows_sent'])}, rejected {_n(doc['rows_rejected'])}, "
        f"pending {_n(doc['rows_pending'])} row(s)"
        + (
            f", outside window {doc['rows_outside_window']:,}" if doc["rows_outside_window"] else ""
        ),
    ]
    if doc["files"]:
        lines.append(f"  {'delivered':>12} {'rejected':>10} {'pending':>10}  {'shards':>7}  file")
    for f in doc["files"]:
        mark = "complete" if f["complete"] else "pending"
        lines.append(
            f"  {f['rows_sent']:>12,} {f['rows_rejected']:>10,} {_n(f['rows_pending']):>10}  "
            f"{f['shards_complete']:>3}/{f['shards']:<3}  {f['file']}  ({mark})"
        )
    for lease in doc["leases"]:
        lines.append(
            f"  lease of {lease['job']}: held by pid {lease['pid']} on host {lease['host']} "
            f"until {lease['expires_at']} (a run is in progress, or crashed: it expires then)"
        )
    wm = doc["nightly_watermark"]
    if wm is not None:
        lines.append(
            f"  nightly watermark: last synced day {wm['last_synced_day'] or '(none yet)'} "
            f"(since {wm['start_day']}, {wm['timezone']}, window={wm['window']}, "
            f"updated {wm['updated_at']})"
        )
    return "\n".join(lines)


def main_status(args: argparse.Namespace) -> int:
    """Run `status`; the exit code."""
    from moesif_backfill.cli_errors import print_failure  # noqa: PLC0415
    from moesif_backfill.errors import BackfillError, ConfigError  # noqa: PLC0415

    try:
        settings = StatusSettings.model_validate(given(args, RunSettings))
    except ValidationError as exc:
        return print_failure(ConfigError.invalid("arguments", exc))
    try:
        doc = job_status(settings)
    except BackfillError as exc:
        return print_failure(exc, debug=getattr(args, "debug", False))
    if args.json:
        json.dump(doc, sys.stdout, indent=2, default=_json_default)
        sys.stdout.write("\n")
    else:
        print(status_text(doc))  # noqa: T201
    return 0


def _json_default(v: object) -> object:
    if isinstance(v, dt.date | dt.datetime):
        return v.isoformat()
    raise TypeError(f"not JSON: {type(v).__name__}")


__all__ = ["StatusSettings", "add_status_parser", "job_status", "main_status", "status_text"]
