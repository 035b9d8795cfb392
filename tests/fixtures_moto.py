"""Fixtures for moto server and the HTTP-endpoint receiver.

``moto_firehose`` (session): a started `LocalFirehose`: moto (Firehose + S3) on 127.0.0.1 with
a bucket and a DirectPut stream delivering to a `FirehoseReceiver`. Use ``.endpoint_url``,
``.region``, ``.stream``, ``.receiver`` (also ``.bucket``, ``.firehose_client()``,
``.s3_client()``, ``.new_stream()``). Its counts are shared by every test that uses it.

``moto_firehose_stream`` (function): a `StreamHandle` (same attribute names) for a FRESH stream
on that server, with the receiver's counts reset first; the stream is deleted afterwards.
Prefer it whenever a test asserts on receiver counts.

moto delivers synchronously inside PutRecordBatch, so the receiver's counts are final as soon
as the call returns. A ``moto.mock_aws`` in the same process resets moto's global state; the
fixtures recreate the bucket and the default stream (``ensure()``) before each use.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.standins.moto_firehose import LocalFirehose, StreamHandle


@pytest.fixture(scope="session")
def moto_firehose() -> Iterator[LocalFirehose]:
    local = LocalFirehose(stream="moesif-actions-test").start()
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture
def moto_firehose_stream(moto_firehose: LocalFirehose) -> Iterator[StreamHandle]:
    moto_firehose.ensure()
    handle = moto_firehose.new_stream()
    moto_firehose.receiver.reset()
    try:
        yield handle
    finally:
        moto_firehose.delete_stream(handle.stream)
