"""The S3 objects of the S3 checkpoint: GET, conditional PUT, HEAD and DELETE on one bucket, and
what S3's error answers mean.

`S3Objects` wraps a plain boto3 S3 client (public API only). The helpers below classify S3's
answers (a failed write condition, a missing object) and turn any error into a message that
says what to do, without anything secret (no raw request dumps, no credentials, no password in
an endpoint URL).
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    ReadTimeoutError,
)

from moesif_backfill.errors import CheckpointError

__all__ = [
    "CONFLICT",
    "MISSING",
    "PRECONDITION",
    "S3Objects",
    "error_code",
    "explain",
    "is_client_error",
    "precondition_failed",
    "redact_endpoint",
]

# S3 error codes meaning "the object is not what the condition expected"
PRECONDITION: Final = frozenset({"PreconditionFailed", "412"})
CONFLICT: Final = frozenset({"ConditionalRequestConflict", "409"})
MISSING: Final = frozenset({"NoSuchKey", "404", "NotFound"})


def error_code(e: BaseException) -> str:
    """The S3 error code of an answer (or its HTTP status), "" when it has none."""
    response = getattr(e, "response", None)
    if isinstance(response, dict):
        error = response.get("Error") or {}
        code = str(error.get("Code") or "")
        if code:
            return code
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        if status:
            return str(status)
    return ""


def is_client_error(e: BaseException) -> bool:
    return isinstance(e, ClientError)


def explain(e: BaseException) -> str:
    """What went wrong, and what to do, without anything secret (no raw request dumps)."""
    if is_client_error(e):
        code = error_code(e)
        message = str((getattr(e, "response", {}).get("Error") or {}).get("Message") or "")
        detail = f"{code}: {message}" if message else code
        if code in {"AccessDenied", "AllAccessDisabled", "403", "Forbidden"}:
            return (
                f"access denied ({detail}); the credentials boto3 found need s3:GetObject, "
                f"s3:PutObject and s3:DeleteObject on this prefix (and the bucket policy or KMS "
                f"key must allow them)"
            )
        if code == "NoSuchBucket":
            return f"the bucket does not exist ({detail}); create it or fix the location"
        if code in {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"}:
            return (
                f"the AWS credentials were rejected ({code}); check the profile, environment "
                f"variables or role boto3 uses, or refresh an expired session"
            )
        if code in {"NotImplemented", "501"}:
            return (
                f"the S3 endpoint does not implement this request ({detail}); the S3 checkpoint "
                f"needs conditional writes (If-None-Match / If-Match on PutObject)"
            )
        if code in {"SlowDown", "ServiceUnavailable", "InternalError", "503", "500"}:
            return f"S3 is throttling or unavailable ({detail}); rerun later to resume"
        return detail or type(e).__name__
    if isinstance(e, NoCredentialsError):
        return (
            "no AWS credentials found; configure boto3's standard chain (AWS_PROFILE, "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws, or an instance/task role)"
        )
    if isinstance(e, NoRegionError):
        return "no AWS region configured; set AWS_REGION or pass a region"
    if isinstance(e, EndpointConnectionError | ConnectTimeoutError):
        return "could not connect to the S3 endpoint (network, proxy or --s3-endpoint-url?)"
    if isinstance(e, ReadTimeoutError):
        return "S3 did not answer in time; rerun later to resume"
    if isinstance(e, BotoCoreError):
        return f"{type(e).__name__} talking to S3"
    return f"{type(e).__name__}: {e}"


def precondition_failed(e: BaseException) -> bool:
    """True for the answers that mean "the object is no longer the one the condition named"."""
    return is_client_error(e) and error_code(e) in PRECONDITION | CONFLICT | MISSING


def redact_endpoint(endpoint_url: str | None) -> str:
    """The endpoint without any user:password part."""
    if not endpoint_url:
        return ""
    try:
        parts = urlsplit(endpoint_url)
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "<invalid endpoint URL>"


class S3Objects:
    """The objects of one bucket, through a boto3 S3 client."""

    def __init__(self, client: Any, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def error(self, action: str, key: str, e: BaseException) -> CheckpointError:
        return CheckpointError(f"could not {action} {self.url(key)}: {explain(e)}")

    def get(self, key: str) -> tuple[bytes, str, Any] | None:
        """Return ``(body, etag, last_modified)`` or None if the object does not exist."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            body = response["Body"].read()
        except Exception as e:
            if is_client_error(e) and error_code(e) in MISSING:
                return None
            raise self.error("read", key, e) from e
        return bytes(body), str(response.get("ETag", "")), response.get("LastModified")

    def put(self, key: str, data: bytes, **condition: str) -> str:
        """PUT ``data``; return its ETag. ClientErrors propagate for the caller to judge."""
        response = self.client.put_object(
            Bucket=self.bucket, Key=key, Body=data, ContentType="application/json", **condition
        )
        return str(response.get("ETag", ""))

    def head_etag(self, key: str) -> str | None:
        """The object's ETag, or None if it does not exist."""
        try:
            response = self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as e:
            if is_client_error(e) and error_code(e) in MISSING:
                return None
            raise self.error("read", key, e) from e
        return str(response.get("ETag", ""))

    def delete(self, key: str, **condition: str) -> None:
        """DELETE the object (a missing object is not an error). Errors propagate."""
        self.client.delete_object(Bucket=self.bucket, Key=key, **condition)
