"""Crash points for the chaos tests.

``MOESIF_BACKFILL_FAILPOINTS="checkpoint.before_replace=3,reader.batch=7"`` makes the process
kill itself with SIGKILL the N-th time it reaches the named point, to prove that a crash at the
worst moment loses nothing. Unset (always, in production) a call is one falsy check. Points:

    reader.batch                 a record batch was read from a source file
    chunk.submitted              a chunk's records were handed to the sink (batches in flight)
    chunk.acknowledged           a chunk was acknowledged (its ledger file written), not committed
    checkpoint.before_replace    the new checkpoint was written and fsynced, not yet renamed
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "MOESIF_BACKFILL_FAILPOINTS"


def _parse(spec: str) -> dict[str, int]:
    points: dict[str, int] = {}
    for item in filter(None, (p.strip() for p in spec.split(","))):
        name, _, count = item.partition("=")
        points[name.strip()] = int(count or "1")
    return points


_POINTS = _parse(os.environ.get(ENV, ""))
_HITS: dict[str, int] = {}
_LOCK = threading.Lock()


def hit(name: str) -> None:
    """Count a pass through `name`; SIGKILL this process on the configured pass."""
    if not _POINTS or name not in _POINTS:
        return
    with _LOCK:
        _HITS[name] = _HITS.get(name, 0) + 1
        if _HITS[name] == _POINTS[name]:
            os.kill(os.getpid(), signal.SIGKILL)
