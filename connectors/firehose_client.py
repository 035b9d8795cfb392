"""The boto3 Firehose client the sender uses, and the preflight check of its stream.

`connectors.firehose.FirehoseSender` owns every retry; a client from `make_firehose_client`
makes exactly one attempt per call, so attempts are never multiplied. `check_delivery_stream`
fails fast, before any data is read, when the stream cannot take direct PUTs.
"""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)

from connectors.firehose_errors import TRANSPORT_ERRORS, advice, error_code, error_message, redact
from moesif_backfill.errors import ConfigError, PermanentDeliveryError

__all__ = ["check_delivery_stream", "client_endpoint", "client_region", "make_firehose_client"]


def make_firehose_client(
    *,
    region: str | None,
    endpoint_url: str | None,
    max_pool_connections: int = 16,
    connect_timeout_s: float = 5,
    read_timeout_s: float = 30,
    session: Any = None,
) -> Any:
    """A plain boto3 Firehose client: botocore retries OFF, explicit timeouts and pool size.

    Public botocore ``Config`` only: ``retries={"total_max_attempts": 1}`` (one attempt per
    call, the initial one; `FirehoseSender` owns every retry), ``parameter_validation=False``
    (botocore would walk all 500 records of a call to check types the sender already
    guarantees: bytes, at most 500 records, at most 4 MiB), connect/read timeouts and the
    connection pool. Credentials come from `session` (e.g. a Prefect AwsCredentials block's
    boto3 session) or else boto3's standard chain (environment, profile, SSO, role...).
    *max_pool_connections* should be at least the sender's ``max_in_flight``.
    """
    config = Config(
        retries={"total_max_attempts": 1, "mode": "standard"},
        parameter_validation=False,
        max_pool_connections=max_pool_connections,
        connect_timeout=connect_timeout_s,
        read_timeout=read_timeout_s,
    )
    try:
        return (session or boto3.session.Session()).client(
            "firehose", region_name=region, endpoint_url=endpoint_url, config=config
        )
    except NoRegionError as exc:
        raise ConfigError(
            "no AWS region for Firehose: pass a region or set AWS_REGION/AWS_DEFAULT_REGION"
        ) from exc


def client_endpoint(client: Any) -> str:
    """The client's endpoint URL, for messages."""
    return str(getattr(getattr(client, "meta", None), "endpoint_url", "<unknown>"))


def client_region(client: Any) -> str:
    """The client's region, for messages."""
    return str(getattr(getattr(client, "meta", None), "region_name", None))


def check_delivery_stream(client: Any, name: str) -> None:
    """Fail fast, before any data is read, if the stream cannot take direct PUTs."""
    region, endpoint = client_region(client), client_endpoint(client)
    try:
        response = client.describe_delivery_stream(DeliveryStreamName=name)
    except ClientError as exc:
        code, message = error_code(exc), redact(error_message(exc))
        raise PermanentDeliveryError(
            f"cannot use Firehose stream {name!r} (region {region}, endpoint "
            f"{endpoint}): {code}: {message}. " + advice(code, region=region, endpoint=endpoint)
        ) from exc
    except (NoCredentialsError, PartialCredentialsError) as exc:
        raise PermanentDeliveryError(
            f"no usable AWS credentials to reach Firehose stream {name!r}: configure them "
            "(AWS_PROFILE, environment variables, SSO login or an instance role), then rerun"
        ) from exc
    except (*TRANSPORT_ERRORS, BotoCoreError) as exc:
        raise PermanentDeliveryError(
            f"cannot reach the Firehose endpoint {endpoint} to check stream {name!r} "
            f"({type(exc).__name__}): check the endpoint URL, the region and the network, "
            "then rerun"
        ) from exc
    description = response.get("DeliveryStreamDescription", {})
    status = description.get("DeliveryStreamStatus")
    stream_type = description.get("DeliveryStreamType", "DirectPut")
    if status != "ACTIVE":
        raise PermanentDeliveryError(
            f"Firehose stream {name!r} is {status}, not ACTIVE: wait until it is ACTIVE "
            "(or fix it in the console), then rerun"
        )
    if stream_type != "DirectPut":
        raise PermanentDeliveryError(
            f"Firehose stream {name!r} reads from a {stream_type} source and does not accept "
            "PutRecordBatch: create a Direct PUT stream for Moesif and use that one"
        )
