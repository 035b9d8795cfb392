"""Reading a PutRecordBatch answer record by record: which records Firehose stored.

A record counts as delivered only through its own ``RequestResponses`` entry with a
``RecordId``; an answer that cannot say that for every record raises `UnusableAnswer`, and the
sender resends the whole call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["UnusableAnswer", "failed_records", "http_status_of"]


class UnusableAnswer(Exception):
    """A PutRecordBatch answer that does not acknowledge each record on its own."""


def failed_records(response: Mapping[str, Any], count: int) -> tuple[list[int], dict[str, int]]:
    """Indexes of the records that failed, and how many failed with each ``ErrorCode``.

    A record is acknowledged only by its own ``RequestResponses`` entry (same order as the
    request) with a ``RecordId``. Raises `UnusableAnswer` when the answer cannot say, record
    by record, what was stored: not one entry per record (``{}`` from a proxy, a truncated
    list), an entry with neither ``RecordId`` nor ``ErrorCode``, or a ``FailedPutCount``
    missing or not equal to the entries carrying an ``ErrorCode``.
    """
    entries = response.get("RequestResponses")
    if not isinstance(entries, list) or len(entries) != count:
        got = len(entries) if isinstance(entries, list) else "no"
        raise UnusableAnswer(f"{got} RequestResponses entries for {count} records")
    failed_count = response.get("FailedPutCount")
    if type(failed_count) is not int:
        raise UnusableAnswer(f"FailedPutCount is {failed_count!r}, not a count")
    failed: list[int] = []
    codes: dict[str, int] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise UnusableAnswer(f"RequestResponses[{index}] is not an object")
        code = entry.get("ErrorCode")
        if code:
            failed.append(index)
            codes[str(code)] = codes.get(str(code), 0) + 1
        elif not entry.get("RecordId"):
            raise UnusableAnswer(f"RequestResponses[{index}] has neither RecordId nor ErrorCode")
    if len(failed) != failed_count:
        raise UnusableAnswer(
            f"FailedPutCount is {failed_count} but {len(failed)} entries carry an ErrorCode"
        )
    return failed, codes


def http_status_of(response: Mapping[str, Any]) -> int:
    """The HTTP status of an answer (0 when it does not say)."""
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
