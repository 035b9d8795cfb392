"""How a checkpoint is stored: a canonical JSON body in a checksummed, versioned envelope.

Stored form (one object per state file or document)::

    {"format_version": 1, "sha256": "<hex of the canonical body>", "body": {...}}

The canonical body is ``json.dumps(body, sort_keys=True, separators=(",", ":"),
ensure_ascii=False)`` encoded as UTF-8. `decode_state` tells a damaged state (torn, truncated,
unparsable, checksum-failing or schema-invalid: `DamagedState`, the store may fall back to the
previous generation) from one that is intact but must not be used (written by a newer format,
or for another job: `CheckpointError`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import ValidationError

from connectors.checkpoint_state import FORMAT_VERSION, JobState
from moesif_backfill.errors import CheckpointError

__all__ = ["DamagedState", "decode_document", "decode_state", "encode_document", "encode_state"]


class DamagedState(Exception):
    """A stored state is unusable (torn, corrupt or schema-invalid); the reason is the text."""


def _canonical(body: Any) -> bytes:
    return json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _envelope(body: bytes) -> bytes:
    """A canonical JSON body in the checksummed, versioned envelope (states and documents)."""
    digest = hashlib.sha256(body).hexdigest()
    head = f'{{"format_version":{FORMAT_VERSION},"sha256":"{digest}","body":'.encode("ascii")
    return head + body + b"}\n"


def encode_state(state: JobState) -> bytes:
    """Serialise ``state`` into the checksummed envelope."""
    return _envelope(_canonical(state.model_dump(mode="json")))


def _too_new(version: int, where: str) -> CheckpointError:
    return CheckpointError(
        f"the checkpoint at {where} was written by a newer moesif-backfill "
        f"(checkpoint format {version}, this version reads format {FORMAT_VERSION}); "
        f"upgrade moesif-backfill to resume this job"
    )


def decode_state(data: bytes, *, job: str, where: str) -> JobState:
    """Parse and verify one stored state.

    Raises `DamagedState` for anything a torn or corrupted write can produce, and
    `CheckpointError` for a state that is intact but must not be used (newer format,
    other job) - those must not fall back to the previous generation.
    """
    try:
        envelope = json.loads(data)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError
        raise DamagedState(f"not valid JSON ({type(e).__name__}; truncated or corrupt)") from e
    if not isinstance(envelope, dict):
        raise DamagedState("not a checkpoint envelope")
    version = envelope.get("format_version")
    if type(version) is int and version > FORMAT_VERSION:
        raise _too_new(version, where)
    if version != FORMAT_VERSION:
        raise DamagedState(f"unsupported format_version {version!r}")
    body, digest = envelope.get("body"), envelope.get("sha256")
    if not isinstance(body, dict) or not isinstance(digest, str):
        raise DamagedState("envelope lacks 'body' or 'sha256'")
    if hashlib.sha256(_canonical(body)).hexdigest() != digest:
        raise DamagedState("checksum mismatch")
    body_version = body.get("format_version")
    if type(body_version) is int and body_version > FORMAT_VERSION:
        raise _too_new(body_version, where)
    try:
        state = JobState.model_validate(body)
    except ValidationError as e:
        raise DamagedState(f"invalid content ({e.error_count()} schema errors)") from e
    if state.format_version != FORMAT_VERSION:
        raise DamagedState(f"unsupported format_version {state.format_version!r} in body")
    if state.job != job:
        raise CheckpointError(
            f"the checkpoint at {where} belongs to job {state.job!r}, not {job!r}; "
            f"the checkpoint location was probably copied or misconfigured"
        )
    return state


def encode_document(body: dict[str, Any]) -> bytes:
    """Serialise a document stored beside a job's state into the same envelope."""
    return _envelope(_canonical(body))


def decode_document(data: bytes, *, where: str) -> dict[str, Any]:
    """Parse and verify one stored document; `CheckpointError` naming *where* if it is damaged
    or written by a newer format (a document has no previous generation to fall back to)."""
    try:
        envelope = json.loads(data)
        version = envelope["format_version"]
        body = envelope["body"]
        digest = envelope["sha256"]
    except (ValueError, RecursionError, TypeError, KeyError) as e:
        raise CheckpointError(
            f"{where} is damaged ({type(e).__name__}); restore it or delete it "
            f"(see the documentation of what it records before deleting)"
        ) from None
    if type(version) is int and version > FORMAT_VERSION:
        raise _too_new(version, where)
    if not isinstance(body, dict) or hashlib.sha256(_canonical(body)).hexdigest() != digest:
        raise CheckpointError(
            f"{where} is damaged (checksum mismatch); restore it or delete it "
            f"(see the documentation of what it records before deleting)"
        )
    return body
