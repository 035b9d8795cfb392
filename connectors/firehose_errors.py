"""What Firehose's errors mean: which are retried, and messages that say what to do.

The error codes `FirehoseSender` treats as throttling, as server errors (both retried) and as
credential problems (not retried), the transport failures it retries, and `redact`, which keeps
anything that looks like a credential out of every message and log line.
"""

from __future__ import annotations

import re

import urllib3.exceptions
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
)

__all__ = [
    "CREDENTIAL_CODES",
    "SERVER_ERROR_CODES",
    "THROTTLING_CODES",
    "TRANSPORT_ERRORS",
    "advice",
    "error_code",
    "error_message",
    "http_status",
    "redact",
]

THROTTLING_CODES = frozenset({"ServiceUnavailableException", "ThrottlingException", "Throttling"})
SERVER_ERROR_CODES = frozenset(
    {"InternalFailure", "InternalFailureException", "InternalServerError", "ServiceFailure"}
)
CREDENTIAL_CODES = frozenset(
    {
        "AccessDeniedException",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "IncompleteSignatureException",
        "MissingAuthenticationTokenException",
        "ExpiredTokenException",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
    }
)
# Transport failures where the request may or may not have reached Firehose: retried.
# EndpointConnectionError (refused/DNS) and ConnectTimeoutError never reached it.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    EndpointConnectionError,
    ConnectTimeoutError,
    HTTPClientError,  # ConnectionClosedError, ReadTimeoutError, ResponseStreamingError, ...
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.TimeoutError,
    ConnectionError,  # builtin: reset/aborted/refused sockets that escaped botocore's wrapping
)
_SECRET_PATTERNS = (
    re.compile(r"\b(?:AKIA|ASIA|AIDA|AROA)[A-Z0-9]{12,}\b"),
    re.compile(r"(Credential=)[^,\s]+"),
    re.compile(r"(?i)(secret|token|signature)([\"']?\s*[:=]\s*)[^\s,;\"']+"),
)


def redact(text: str, limit: int = 500) -> str:
    """Remove anything that looks like a credential, and bound the length."""
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "<redacted>", text)
    return text if len(text) <= limit else text[:limit] + "..."


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code") or "Unknown")


def error_message(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Message") or "")


def http_status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def advice(code: str, *, region: str, endpoint: str) -> str:
    """What to do about a Firehose error that is not retried (for the error's message)."""
    if code == "ResourceNotFoundException":
        return (
            f"The stream does not exist in region {region} (endpoint {endpoint}): "
            "create it, or fix the stream name or region, then rerun."
        )
    if code in CREDENTIAL_CODES:
        return (
            "The AWS credentials were rejected or lack permission: check which credentials are "
            "in use (profile, environment, role) and that they allow firehose:PutRecordBatch "
            "and firehose:DescribeDeliveryStream on this stream, then rerun."
        )
    if code.startswith("KMS") or "KMS" in code:
        return "The stream's KMS key is unusable: check the key's state and policy, then rerun."
    if code in {"InvalidArgumentException", "ValidationException", "InvalidSourceException"}:
        return (
            "Firehose refused the request as invalid (wrong stream type, or records over the "
            "limits): fix the cause, then rerun."
        )
    return (
        "This error is not known to be safe to retry (a blind resend could duplicate "
        "records): investigate, then rerun."
    )
