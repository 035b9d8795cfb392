"""The run summary: an exact account of every input row, written as JSON and shown as a table.

Every run: rows_read == actions_sent + rows_rejected + rows_skipped + rows_outside_window +
rows_too_old (`RunSummary.accounted`). rows_rejected includes the rows an earlier run rejected
(rows_rejected_earlier); rows_skipped are rows an earlier run delivered.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RunSummary:
    job: str
    mode: str
    status: str = "running"  # complete | complete_with_rejects | failed
    rows_read: int = 0
    actions_sent: int = 0
    rows_rejected: int = 0
    rows_skipped: int = 0
    rows_outside_window: int = 0  # time outside the run's window (nightly time mode): not sent
    rows_too_old: int = 0  # older than 30 days, left pending (--skip-older-than-30-days)
    rows_rejected_earlier: int = 0  # of rows_rejected: rejected by an earlier run of the job
    sink: str = "firehose"  # where actions went: firehose | moesif (the Collector API)
    calls: int = 0  # requests to the sink: PutRecordBatch calls, or Collector batch POSTs
    firehose_calls: int = 0
    records_retried: int = 0
    throttled_calls: int = 0  # PutRecordBatch calls refused whole for throughput
    # records refused with ServiceUnavailableException inside an answered call (throttling too)
    throttled_records: int = 0
    server_errors: int = 0
    connection_errors: int = 0
    bytes_sent: int = 0
    bytes_compressed: int = 0  # --sink moesif: gzip bytes of the acknowledged batches
    records_refused: int = 0  # --sink moesif: actions refused with 413 alone (rejected)
    billable_5kb_units: int = 0
    # Time the given quota allows for this run's records: max(records / records_per_second,
    # bytes / (mib_per_second * MiB)) / streams; None without a records/s or MiB/s limit.
    expected_send_s: float | None = None
    send_limits: dict[str, Any] = field(default_factory=dict)  # per-stream limits, stream count
    streams: dict[str, dict[str, int]] = field(default_factory=dict)  # per stream: records...
    metadata_nonfinite_omitted: int = 0
    # rows sent without a field because their file lacks its column (if_missing: omit)
    sent_without_field: dict[str, int] = field(default_factory=dict)
    rows_older_than_30_days: int = 0
    files_total: int = 0
    files_complete: int = 0
    chunks_committed: int = 0
    duration_s: float = 0.0
    startup_s: float = 0.0
    rows_per_second: float = 0.0
    checkpoint: str | None = None
    rejects_path: str | None = None
    out_dir: str | None = None
    job_totals: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    error_type: str | None = None
    sample_actions: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # what the mapping leaves out (validate)

    @property
    def accounted(self) -> bool:
        return self.rows_read == (
            self.actions_sent
            + self.rows_rejected
            + self.rows_skipped
            + self.rows_outside_window
            + self.rows_too_old
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["accounted"] = self.accounted
        return d

    def table_rows(self) -> list[dict[str, Any]]:
        labels = {
            "actions_sent": "would be sent" if self.mode == "dry-run" else "sent",
        }
        keys = [
            "status",
            "rows_read",
            "actions_sent",
            "rows_rejected",
            "rows_rejected_earlier",
            "rows_skipped",
            "rows_outside_window",
            "rows_too_old",
            "calls",
            "firehose_calls",
            "records_retried",
            "throttled_calls",
            "throttled_records",
            "server_errors",
            "connection_errors",
            "bytes_sent",
            "billable_5kb_units",
            "expected_send_s",
            "metadata_nonfinite_omitted",
            "files_complete",
            "files_total",
            "duration_s",
            "rows_per_second",
        ]
        d = self.to_dict()
        # typed cells (ints, floats, the status text; None when not known), not their text
        return [{"metric": labels.get(k, k), "value": d[k]} for k in keys]


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)
