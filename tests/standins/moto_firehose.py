"""moto server playing Amazon Data Firehose (and S3) on 127.0.0.1, delivering to a local receiver.

`LocalFirehose` wires the pieces the demo and the tests use::

    producer --boto3 PutRecordBatch--> moto (Firehose, S3)  --POST-->  FirehoseReceiver
                 endpoint_url=http://127.0.0.1:<moto port>            http://127.0.0.1:<port>

It starts a `FirehoseReceiver` (unless given one), moto's ``ThreadedMotoServer`` on a free
loopback port, an S3 bucket for failed deliveries/backup, and a DirectPut delivery stream whose
``HttpEndpointDestinationConfiguration`` mirrors Moesif's CDK construct (GZIP, 1 MB / 60 s
buffering, FailedDataOnly S3 backup) but points at the receiver. The destination access key is a
dummy value: the real product puts the Moesif Application Id there, which is a secret, so nothing
here ever logs, prints or returns an access key.

What moto does with that configuration is described in `receiver`'s module docstring; in short
only ``EndpointConfiguration.Url`` is used: delivery is synchronous (one POST per PutRecordBatch
call), un-gzipped, without X-Amz-Firehose headers, with a seconds timestamp; the endpoint's
answer is ignored, ``FailedPutCount`` is always 0 and the S3 bucket never receives anything.

Caveats:

* moto keeps its state in process-wide globals. A ``moto.mock_aws`` started or stopped in the
  same process resets every backend, including this server's bucket and streams. Call
  `LocalFirehose.ensure` (the test fixtures do) before relying on them after such a test.
* Every AWS client made here uses dummy credentials and ``endpoint_url`` on 127.0.0.1, and
  ``NO_PROXY`` is extended with the loopback names, so nothing is sent anywhere else.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from typing import Any, Self

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from moto.server import ThreadedMotoServer

from tests.standins.lifecycle import StartStop
from tests.standins.receiver import FirehoseReceiver

__all__ = [
    "DEFAULT_BUCKET",
    "DEFAULT_REGION",
    "DEFAULT_STREAM",
    "MOESIF_ACTIONS_PATH",
    "LocalFirehose",
    "MotoServer",
    "StreamHandle",
    "aws_client",
    "create_http_endpoint_stream",
    "ensure_bucket",
]

DEFAULT_REGION = "us-east-1"
DEFAULT_STREAM = "moesif-actions-local"
DEFAULT_BUCKET = "moesif-firehose-failed-local"
#: The path of Moesif's actions endpoint; the receiver accepts any path, this keeps URLs realistic.
MOESIF_ACTIONS_PATH = "/v1/partners/aws/kinesis/actions"
_ACCOUNT_ID = "123456789012"  # moto's default account
_ROLE_ARN = f"arn:aws:iam::{_ACCOUNT_ID}:role/moesif-firehose-local-standin"
# Not a secret: a placeholder where the product puts the Moesif Application Id.
_DUMMY_ACCESS_KEY = "local-standin-dummy-access-key"
_DUMMY_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
_LOOPBACK = ("127.0.0.1", "localhost", "::1")

log = logging.getLogger(__name__)


def _ensure_no_proxy() -> None:
    """Make sure loopback traffic never goes through an HTTP(S)_PROXY from the environment."""
    for var in ("NO_PROXY", "no_proxy"):
        present = [p.strip() for p in os.environ.get(var, "").split(",") if p.strip()]
        missing = [h for h in _LOOPBACK if h not in present]
        if missing:
            os.environ[var] = ",".join([*present, *missing])


def aws_client(service: str, endpoint_url: str, region: str = DEFAULT_REGION, **config: Any) -> Any:
    """A boto3 client for ``service`` at ``endpoint_url`` with dummy credentials.

    ``config`` goes to ``botocore.config.Config`` (e.g. ``retries={"max_attempts": 1}``).
    """
    _ensure_no_proxy()
    return boto3.session.Session().client(
        service,
        endpoint_url=endpoint_url,
        region_name=region,
        config=Config(**config) if config else None,
        **_DUMMY_CREDENTIALS,
    )


class MotoServer:
    """moto's ThreadedMotoServer on 127.0.0.1 (port 0 = a free port), without request logging."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, quiet: bool = True) -> None:
        if host not in _LOOPBACK:
            raise ValueError(f"moto stand-in must listen on loopback, not {host!r}")
        self._server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
        self._quiet = quiet
        self._endpoint_url: str | None = None

    def start(self) -> Self:
        if self._endpoint_url is not None:
            return self
        if self._quiet:  # werkzeug logs every request at INFO; errors (WARNING+) still show
            logging.getLogger("werkzeug").setLevel(logging.WARNING)
        _ensure_no_proxy()
        self._server.start()
        host, port = self._server.get_host_and_port()
        self._endpoint_url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        if self._endpoint_url is None:
            return
        self._server.stop()
        self._endpoint_url = None

    @property
    def endpoint_url(self) -> str:
        if self._endpoint_url is None:
            raise RuntimeError("MotoServer is not started")
        return self._endpoint_url


def ensure_bucket(s3: Any, bucket: str, region: str) -> None:
    """Create ``bucket`` unless it exists already."""
    kwargs: dict[str, Any] = {"Bucket": bucket}
    if region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        s3.create_bucket(**kwargs)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in (
            "BucketAlreadyOwnedByYou",
            "BucketAlreadyExists",
        ):
            raise


def create_http_endpoint_stream(
    firehose: Any,
    *,
    stream: str,
    url: str,
    bucket: str,
    access_key: str = _DUMMY_ACCESS_KEY,
    content_encoding: str = "GZIP",
) -> str:
    """Create a DirectPut stream delivering to the HTTP endpoint ``url``; return its ARN.

    Mirrors Moesif's Firehose construct: GZIP, 1 MB / 60 s buffering, failed data to S3.
    ``access_key`` is sent to the API only and never logged.
    """
    response = firehose.create_delivery_stream(
        DeliveryStreamName=stream,
        DeliveryStreamType="DirectPut",
        HttpEndpointDestinationConfiguration={
            "EndpointConfiguration": {
                "Url": url,
                "Name": "Moesif (local stand-in)",
                "AccessKey": access_key,
            },
            "RequestConfiguration": {"ContentEncoding": content_encoding},
            "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 60},
            "RetryOptions": {"DurationInSeconds": 300},
            "S3BackupMode": "FailedDataOnly",
            "S3Configuration": {
                "RoleARN": _ROLE_ARN,
                "BucketARN": f"arn:aws:s3:::{bucket}",
                "Prefix": f"failed/{stream}/",
            },
        },
    )
    return str(response["DeliveryStreamARN"])


@dataclass(frozen=True)
class StreamHandle:
    """Everything a producer needs to send to one local stream, and the receiver to check."""

    endpoint_url: str
    region: str
    stream: str
    bucket: str
    receiver: FirehoseReceiver

    def firehose_client(self, **config: Any) -> Any:
        return aws_client("firehose", self.endpoint_url, self.region, **config)

    def s3_client(self, **config: Any) -> Any:
        return aws_client("s3", self.endpoint_url, self.region, **config)


class LocalFirehose(StartStop):
    """Receiver + moto server + S3 bucket + one HTTP-endpoint delivery stream, all on loopback.

    Use as a context manager or call `start`/`stop`. ``endpoint_url``, ``region``, ``stream``
    and ``receiver`` are what producers and tests need; `new_stream` makes more streams that
    deliver to the same receiver.
    """

    def __init__(
        self,
        *,
        stream: str = DEFAULT_STREAM,
        region: str = DEFAULT_REGION,
        bucket: str = DEFAULT_BUCKET,
        receiver: FirehoseReceiver | None = None,
        moto_port: int = 0,
        receiver_port: int = 0,
    ) -> None:
        self.stream = stream
        self.region = region
        self.bucket = bucket
        self._owns_receiver = receiver is None
        self.receiver = (
            receiver
            if receiver is not None
            else FirehoseReceiver(port=receiver_port, access_key=_DUMMY_ACCESS_KEY)
        )
        self._moto = MotoServer(port=moto_port)
        self._started = False
        self._clients: dict[str, Any] = {}  # default-config clients for our own set-up calls

    def __repr__(self) -> str:
        state = f"endpoint_url={self.endpoint_url!r}" if self._started else "stopped"
        return f"LocalFirehose(stream={self.stream!r}, {state})"

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> Self:
        if self._started:
            return self
        self.receiver.start()
        try:
            self._moto.start()
            self._started = True
            self.ensure()
        except BaseException:
            self.stop()
            raise
        log.info(
            "local Firehose up: endpoint %s, stream %s -> %s",
            self.endpoint_url,
            self.stream,
            self.delivery_url,
        )
        return self

    def stop(self) -> None:
        self._moto.stop()
        self._clients.clear()
        if self._owns_receiver:
            self.receiver.stop()
        self._started = False

    # -- addresses -----------------------------------------------------------------------
    @property
    def endpoint_url(self) -> str:
        return self._moto.endpoint_url

    @property
    def receiver_url(self) -> str:
        """Base URL of the receiver (``GET /stats`` etc. live under it)."""
        return self.receiver.url

    @property
    def delivery_url(self) -> str:
        """The HTTP-endpoint URL configured on the streams."""
        return self.receiver.url + MOESIF_ACTIONS_PATH

    def firehose_client(self, **config: Any) -> Any:
        return aws_client("firehose", self.endpoint_url, self.region, **config)

    def s3_client(self, **config: Any) -> Any:
        return aws_client("s3", self.endpoint_url, self.region, **config)

    def _client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = aws_client(service, self.endpoint_url, self.region)
        return self._clients[service]

    # -- streams -------------------------------------------------------------------------
    def handle(self, stream: str | None = None) -> StreamHandle:
        return StreamHandle(
            endpoint_url=self.endpoint_url,
            region=self.region,
            stream=stream or self.stream,
            bucket=self.bucket,
            receiver=self.receiver,
        )

    def _stream_exists(self, firehose: Any, stream: str) -> bool:
        try:
            firehose.describe_delivery_stream(DeliveryStreamName=stream)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                return False
            raise
        return True

    def ensure(self) -> None:
        """(Re)create the bucket and the default stream if missing (e.g. after a moto reset)."""
        ensure_bucket(self._client("s3"), self.bucket, self.region)
        firehose = self._client("firehose")
        if not self._stream_exists(firehose, self.stream):
            create_http_endpoint_stream(
                firehose, stream=self.stream, url=self.delivery_url, bucket=self.bucket
            )

    def new_stream(self, name: str | None = None) -> StreamHandle:
        """Create another stream delivering to the same receiver (fresh unique name by default)."""
        stream = name or f"moesif-actions-{uuid.uuid4().hex[:12]}"
        ensure_bucket(self._client("s3"), self.bucket, self.region)
        create_http_endpoint_stream(
            self._client("firehose"), stream=stream, url=self.delivery_url, bucket=self.bucket
        )
        return self.handle(stream)

    def delete_stream(self, name: str) -> None:
        try:
            self._client("firehose").delete_delivery_stream(DeliveryStreamName=name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                raise
