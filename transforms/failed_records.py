"""Firehose's S3 backup of failed HTTP-endpoint deliveries, decoded (pure: bytes in, actions out).

An object (maybe gzip'd, maybe several gzip members: detected by the magic bytes 1f 8b, not the
name) holds one JSON object per line: `attemptsMade`, `arrivalTimestamp` (epoch ms),
`errorCode`, `errorMessage`, `attemptEndingTimestamp`, `rawData` (base64 of the record as it
was put, itself maybe gzip'd), `subsequenceNumber`, `dataId`. A record's data is one action, a
JSON array of actions, or newline-delimited actions; each action is kept as its ORIGINAL bytes
(a single object: stripped of surrounding whitespace; array elements and NDJSON values: sliced
out of the text at json's `raw_decode` positions), never re-serialized.

    decode_object(data) -> list[Line]     every non-blank line, numbered from 1
    split_actions(text) -> list[(bytes, value)]

Nothing is dropped silently: a line that cannot be decoded is a `Line` with one `Rejected`
(index None), an action that is not a valid Moesif action is a `Rejected` with its index.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import gzip
import json
import uuid
import zlib
from dataclasses import dataclass
from typing import Any

GZIP_MAGIC = b"\x1f\x8b"
MAX_ACTION_BYTES = 1_024_000  # Firehose's record limit (one action per record)
EXCERPT_CHARS = 500
_DECODER = json.JSONDecoder()
_WS = " \t\r\n"


class RecordError(ValueError):
    """A line or record that cannot be decoded; the message is the reason."""


@dataclass(frozen=True)
class Action:
    data: bytes  # the action's original bytes
    transaction_id: str
    time_us: int | None  # request.time (None: missing, Moesif fills it in)
    index: int  # position in its record


@dataclass(frozen=True)
class Rejected:
    reason: str
    index: int | None  # the action's position in its record; None: the whole line
    excerpt: str


@dataclass(frozen=True)
class Line:
    number: int  # 1-based line of the (decompressed) object
    arrival_ms: int | None = None
    error_code: str | None = None
    actions: tuple[Action, ...] = ()
    rejected: tuple[Rejected, ...] = ()

    @property
    def line_rejected(self) -> bool:
        """The line itself could not be decoded (its actions are unknown)."""
        return any(r.index is None for r in self.rejected)

    @property
    def count(self) -> int:
        """Actions this line accounts for: valid, rejected, or 1 for an undecodable line."""
        return len(self.actions) + len(self.rejected)


def gunzip_if_gzip(data: bytes, what: str) -> bytes:
    """`data` decompressed when it starts with the gzip magic (all members), else as it is."""
    if not data.startswith(GZIP_MAGIC):
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise RecordError(f"{what} starts like gzip but does not decompress ({exc})") from None


def _excerpt(data: bytes | str) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "..."


def decode_object(data: bytes) -> list[Line]:
    """Every non-blank line of a failed-delivery object (gzip'd or not), decoded."""
    try:
        text = gunzip_if_gzip(data, "the object")
    except RecordError as exc:
        return [Line(1, rejected=(Rejected(str(exc), None, _excerpt(data[:64])),))]
    lines = []
    for number, raw in enumerate(text.split(b"\n"), start=1):
        if raw.strip():
            lines.append(decode_line(number, raw))
    return lines


def decode_line(number: int, raw: bytes) -> Line:
    """One line of a failed-delivery object."""
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        return _bad(number, f"not a JSON line ({exc})", raw)
    if not isinstance(doc, dict):
        return _bad(number, "not a failed-delivery line (a JSON object)", raw)
    arrival = doc.get("arrivalTimestamp")
    arrival_ms = arrival if isinstance(arrival, int) and not isinstance(arrival, bool) else None
    code = doc.get("errorCode")
    error_code = code if isinstance(code, str) else None
    raw_data = doc.get("rawData")
    if not isinstance(raw_data, str):
        return _bad(number, "not a failed-delivery line: no rawData string", raw, arrival_ms)
    try:
        record = decode_raw_data(raw_data)
        values = split_actions(record)
    except RecordError as exc:
        return _bad(number, str(exc), raw, arrival_ms, error_code)
    actions: list[Action] = []
    rejected: list[Rejected] = []
    for index, (data, value) in enumerate(values):
        try:
            actions.append(check_action(data, value, index))
        except RecordError as exc:
            rejected.append(Rejected(str(exc), index, _excerpt(data)))
    return Line(number, arrival_ms, error_code, tuple(actions), tuple(rejected))


def _bad(
    number: int, reason: str, raw: bytes, arrival_ms: int | None = None, code: str | None = None
) -> Line:
    return Line(number, arrival_ms, code, rejected=(Rejected(reason, None, _excerpt(raw)),))


def decode_raw_data(raw_data: str) -> str:
    """A line's `rawData`: base64, maybe gzip'd, UTF-8 text."""
    try:
        record = base64.b64decode(raw_data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RecordError(f"rawData is not base64 ({exc})") from None
    record = gunzip_if_gzip(record, "rawData")
    try:
        return record.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError(f"rawData is not UTF-8 text ({exc})") from None


def split_actions(text: str) -> list[tuple[bytes, Any]]:
    """The actions of a record's text, each (its original bytes, its JSON value): one value,
    a JSON array of values, or newline-delimited values. RecordError when it is not JSON."""
    start = _skip_ws(text, 0)
    if start == len(text):
        raise RecordError("the record holds no action (empty)")
    if text[start] == "[":
        return _array_elements(text, start)
    out = []
    pos = start
    while pos < len(text):
        value, end = _value_at(text, pos)
        out.append((text[pos:end].encode("utf-8"), value))
        pos = _skip_ws(text, end)
    return out


def _array_elements(text: str, start: int) -> list[tuple[bytes, Any]]:
    out: list[tuple[bytes, Any]] = []
    pos = _skip_ws(text, start + 1)
    if pos < len(text) and text[pos] == "]":
        raise RecordError("the record holds no action (an empty JSON array)")
    while True:
        value, end = _value_at(text, pos)
        out.append((text[pos:end].encode("utf-8"), value))
        pos = _skip_ws(text, end)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
            continue
        if pos < len(text) and text[pos] == "]":
            break
        raise RecordError(f"the record is not valid JSON: expected ',' or ']' at char {pos}")
    if _skip_ws(text, pos + 1) != len(text):
        raise RecordError(f"the record is not valid JSON: extra data after the array (char {pos})")
    return out


def _value_at(text: str, pos: int) -> tuple[Any, int]:
    try:
        value, end = _DECODER.raw_decode(text, pos)
    except json.JSONDecodeError as exc:
        raise RecordError(f"the record is not valid JSON ({exc})") from None
    return value, end


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WS:
        pos += 1
    return pos


def check_action(data: bytes, value: Any, index: int = 0) -> Action:
    """`value` (decoded from `data`) as a Moesif action to re-send as it is; RecordError with
    the reason when it is not one (never fixed up: a new transaction_id would duplicate)."""
    if not isinstance(value, dict):
        raise RecordError("not an action: not a JSON object")
    if not isinstance(value.get("action_name"), str):
        raise RecordError("not an action: no action_name string")
    request = value.get("request")
    if not isinstance(request, dict):
        raise RecordError("not an action: no request object")
    tid = value.get("transaction_id")
    if not isinstance(tid, str) or not _is_uuid(tid):
        raise RecordError(
            "no valid transaction_id (a 36-character UUID): re-sending it without one could "
            "duplicate it at Moesif"
        )
    if len(data) > MAX_ACTION_BYTES:
        raise RecordError(f"the action has {len(data):,} bytes, over Firehose's record limit")
    return Action(data, tid, _time_us(request.get("time")), index)


def _is_uuid(text: str) -> bool:
    if len(text) != 36:
        return False
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def _time_us(value: Any) -> int | None:
    """request.time as epoch µs (None when missing: Moesif fills it in); RecordError when it
    is there but not an ISO 8601 text (a time without a zone is UTC, as Moesif reads it)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise RecordError("request.time is not an ISO 8601 string")
    text = value.strip()
    if text.endswith(("z", "Z")):
        text = text[:-1] + "+00:00"
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise RecordError(f"request.time {_excerpt(value)!r} is not an ISO 8601 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    delta = when - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


__all__ = [
    "GZIP_MAGIC",
    "MAX_ACTION_BYTES",
    "Action",
    "Line",
    "RecordError",
    "Rejected",
    "check_action",
    "decode_line",
    "decode_object",
    "decode_raw_data",
    "gunzip_if_gzip",
    "split_actions",
]
