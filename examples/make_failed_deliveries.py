"""Write Firehose failed-delivery objects for the demo's `redrive` step.

Takes the first actions of a `run --dry-run` output (the exact records `run` sends) and writes
them to S3 as Amazon Data Firehose writes what its HTTP endpoint did not accept: under
`<prefix>YYYY/MM/dd/HH/`, objects named `<stream>-1-YYYY-MM-dd-HH-mm-ss-<uuid>`, one JSON line
per record (`attemptsMade`, `arrivalTimestamp`, `errorCode`, `errorMessage`,
`attemptEndingTimestamp`, `rawData` = base64 of the record, `subsequenceNumber`, `dataId`).
One object is gzip'd (as with a compressed backup); one record holds a JSON array of three
actions (a producer that batched them). The objects arrived in the last two hours.

    python examples/make_failed_deliveries.py --dry-run-dir .demo/preview \
        --bucket B --prefix failed/errors/ --stream S --s3-endpoint-url URL [--actions 300]
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import gzip
import json
import uuid
from pathlib import Path

import boto3

ERRORS = [
    ("HttpEndpoint.ResponseTooLarge", "The response received from the endpoint is too large."),
    ("HttpEndpoint.DestinationException", '{"errorMessage": "Service Unavailable"}'),
]


def read_actions(dry_run_dir: Path, limit: int) -> list[bytes]:
    actions: list[bytes] = []
    for path in sorted(dry_run_dir.glob("*.ndjson.gz")):
        with gzip.open(path, "rb") as fh:
            actions += [line.rstrip(b"\n") for line in fh if line.strip()]
        if len(actions) >= limit:
            break
    return actions[:limit]


def failed_line(data: bytes, n: int, error: tuple[str, str], arrival_ms: int) -> bytes:
    line = {
        "attemptsMade": 4,
        "arrivalTimestamp": arrival_ms,
        "errorCode": error[0],
        "errorMessage": error[1],
        "attemptEndingTimestamp": arrival_ms + 3_600_000,
        "rawData": base64.b64encode(data).decode("ascii"),
        "subsequenceNumber": 0,
        "dataId": f"4961000000000000000000000000000000000000000000{n:010d}.0",
    }
    return json.dumps(line).encode() + b"\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run-dir", type=Path, required=True)
    p.add_argument("--bucket", required=True)
    p.add_argument("--prefix", default="failed/errors/")
    p.add_argument("--stream", required=True)
    p.add_argument("--s3-endpoint-url", required=True)
    p.add_argument("--region", default="us-east-1")
    p.add_argument("--actions", type=int, default=300)
    args = p.parse_args()
    actions = read_actions(args.dry_run_dir, args.actions)
    if len(actions) < 4:
        raise SystemExit(f"{args.dry_run_dir}: fewer than 4 actions to write")
    # one record holding a JSON array of three actions, then one action per record
    records = [b"[" + b",".join(actions[:3]) + b"]", *actions[3:]]
    halves = [records[: len(records) // 2], records[len(records) // 2 :]]
    s3 = boto3.client("s3", endpoint_url=args.s3_endpoint_url, region_name=args.region)
    now = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    for i, (part, error) in enumerate(zip(halves, ERRORS, strict=True)):
        arrived = now - dt.timedelta(hours=2 - i)
        hour = arrived.strftime("%Y/%m/%d/%H/")
        name = f"{args.stream}-1-{arrived:%Y-%m-%d-%H-%M-%S}-{uuid.UUID(int=i + 1)}"
        arrival_ms = int(arrived.timestamp() * 1000)
        body = b"".join(failed_line(r, n, error, arrival_ms) for n, r in enumerate(part))
        if i == 1:  # a compressed backup; redrive detects gzip by its magic bytes
            body = gzip.compress(body, mtime=0)
        s3.put_object(Bucket=args.bucket, Key=args.prefix + hour + name, Body=body)
    print(
        f"wrote 2 failed-delivery objects ({len(actions)} actions in {len(records)} records) "
        f"under s3://{args.bucket}/{args.prefix}"
    )


if __name__ == "__main__":
    main()
