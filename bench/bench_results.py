"""The end of every benchmark: its results as JSON (with --json) and its exit code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def finish(results: dict[str, Any], ok: bool, json_path: Path | None, failed: str) -> int:
    """Record `ok` in `results`, write them to `json_path` (when given), say `failed` (what a
    failed correctness check means, in parentheses) unless `ok`; the exit code (0 or 1)."""
    results["ok"] = bool(ok)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"\nwrote {json_path}")
    if not ok:
        print(f"\nCORRECTNESS CHECK FAILED {failed}")
    return 0 if ok else 1
