"""S3 URLs and the error messages of S3 access (no credentials ever in them).

    is_s3(path) -> bool
    split_url(url) -> (bucket, key)            SourceError for a malformed URL
    error_code(exc) -> str                     S3's error code, or the HTTP status
    client_error_message(url, exc, *, listing, endpoint) -> str
    changed_message(url, etag) -> str          the object was replaced during the run

`endpoint` is the custom endpoint as shown to the user (`shown_endpoint`), or "".
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from moesif_backfill.errors import SourceError

PRECONDITION_FAILED = frozenset({"PreconditionFailed", "412"})
NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})
RANGE_PAST_END = frozenset({"InvalidRange", "416"})


def is_s3(path: str) -> bool:
    """True for ``s3://...`` URLs (any case of the scheme)."""
    return isinstance(path, str) and path[:5].lower() == "s3://"


def shown_endpoint(endpoint: str | None) -> str:
    """A custom endpoint for messages (user/password parts removed), or ''."""
    if not endpoint:
        return ""
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}" if parts.scheme else host


def no_credentials_message(url: str) -> str:
    return (
        f"{url}: no AWS credentials found to read it; configure boto3's standard chain "
        "(AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws, SSO, or an instance/task "
        "role)."
    )


def split_url(url: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key); SourceError for a malformed URL."""
    if not is_s3(url):
        raise SourceError(f"{url!r} is not an S3 URL (expected s3://bucket/key).")
    bucket, _, key = url[5:].partition("/")
    if not bucket or any(c.isspace() or c in "?#*[" for c in bucket):
        raise SourceError(
            f"Input {url!r}: not a valid S3 URL; expected s3://bucket/prefix/, "
            "s3://bucket/prefix/*.parquet or s3://bucket/key."
        )
    return bucket, key


def client_error_message(url: str, exc: BaseException, *, listing: bool, endpoint: str) -> str:
    bucket, key = split_url(url)
    at = f" at {endpoint}" if endpoint else ""
    if isinstance(exc, NoCredentialsError):
        return no_credentials_message(url)
    if isinstance(exc, EndpointConnectionError | ConnectTimeoutError):
        return (
            f"{url}: cannot connect to the S3 endpoint{at}; check the network, proxy settings "
            "and --s3-endpoint-url."
        )
    if isinstance(exc, ReadTimeoutError):
        return f"{url}: S3{at} did not answer in time; rerun later."
    if not isinstance(exc, ClientError):
        return f"{url}: cannot {'list' if listing else 'read'} it ({type(exc).__name__})."
    error = exc.response.get("Error", {})
    code = str(error.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
    return _code_message(url, bucket, key, code, listing=listing, at=at)


def _code_message(url: str, bucket: str, key: str, code: str, *, listing: bool, at: str) -> str:
    if code == "NoSuchBucket":
        return f"{url}: the bucket {bucket!r} does not exist{at} (NoSuchBucket); check the URL."
    if code in {"AccessDenied", "AllAccessDisabled", "403", "Forbidden"}:
        if listing:
            need = f"s3:ListBucket on arn:aws:s3:::{bucket}"
        else:
            need = (
                f"s3:GetObject on arn:aws:s3:::{bucket}/{key} (S3 also answers AccessDenied "
                "for a missing object when s3:ListBucket is not granted)"
            )
        return (
            f"{url}: access denied ({code}); the AWS credentials in use need {need}, and a "
            "bucket policy or KMS key policy that allows it."
        )
    if code in {"NoSuchKey", "404", "NotFound"}:
        return (
            f"{url}: the object does not exist{at} (deleted or renamed since it was listed?); "
            "check the URL or list the inputs again."
        )
    if code in {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"}:
        return (
            f"{url}: the AWS credentials were rejected ({code}); check the profile, environment "
            "variables or role in use, or refresh an expired session."
        )
    if code in {"SlowDown", "ServiceUnavailable", "InternalError", "503", "500"}:
        return f"{url}: S3{at} is throttling or unavailable ({code}); rerun later."
    action = "list objects under it" if listing else "read it"
    return f"{url}: cannot {action} ({code or 'unknown S3 error'})."


def error_code(exc: ClientError) -> str:
    response: Any = exc.response
    code = response.get("Error", {}).get("Code")
    return str(code or response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


def changed_message(url: str, etag: str | None) -> str:
    listed = f" (ETag {etag})" if etag else ""
    return (
        f"{url}: the object changed during the run: S3 no longer has the version{listed} that "
        "was listed when the run was planned; it was overwritten or replaced while the run "
        "read it. Nothing of the new version was sent under the old version's identity, and "
        "the checkpoint holds what was delivered. Rerun to read the new version; if part of "
        "the old one was delivered already, the rerun stops saying the file changed since it "
        f"was (partly) delivered: then rerun with --reprocess {url}."
    )
