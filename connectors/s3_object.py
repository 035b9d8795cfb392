"""One S3 object read with ranged GETs, every one pinned to the version that was listed.

    S3Object(client, url, etag=..., size=..., fetched=None, stream=False, endpoint="")
    Fetched(size, etag, head, tail)       bytes of an object already in memory

Every GET carries ``If-Match: <etag>`` (the listed ETag; None: the ETag of the first answer)
and the answer's ETag and Content-Range total are checked too (for S3-compatible stores that
ignore If-Match): an object overwritten or replaced during the run raises
`SourceChangedError` naming the URL instead of giving bytes of the new version. Bytes already
in memory (`Fetched`: the whole of a small object, or the beginning and the Parquet footer of
a bigger one) are served from there without a request.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from connectors.s3_errors import (
    PRECONDITION_FAILED,
    RANGE_PAST_END,
    changed_message,
    client_error_message,
    error_code,
    split_url,
)
from moesif_backfill.errors import SourceChangedError, SourceError

#: One ranged GET of an object's end brings its size, its ETag and (Parquet) its footer: 64 KiB
#: is what pyarrow's Parquet reader asks for first, so the footer read is served from it.
PARQUET_TAIL_BYTES = 64 << 10
PARQUET_MAGIC = b"PAR1"
_READ_ATTEMPTS = 3  # a GET whose body broke off is made again (botocore retries the request)


@dataclass(frozen=True)
class Fetched:
    """Bytes of one version of an object already read: [0, len(head)) and the last
    len(tail) bytes (a Parquet footer, or b"")."""

    size: int
    etag: str | None
    head: bytes
    tail: bytes

    @property
    def whole(self) -> bool:
        return len(self.head) >= self.size

    @property
    def nbytes(self) -> int:
        return len(self.head) + len(self.tail)


class S3Object(io.RawIOBase):
    """An S3 object read with ranged GETs, every one pinned to the same version: it sends
    ``If-Match: <etag>`` (`etag` None: the ETag of the first answer) and checks the answer's
    ETag, so a replaced object raises SourceChangedError instead of giving the new bytes.

    Bytes already in memory (the prefetched beginning and Parquet footer, or the end read to
    learn an unknown size) are served from there; as a stream, the beginning is let go once
    read past. Thread-safety: pyarrow's PythonFile serialises the calls.
    """

    def __init__(
        self,
        client: Any,
        url: str,
        *,
        etag: str | None,
        size: int | None,
        fetched: Fetched | None = None,
        stream: bool = False,
        endpoint: str = "",
    ) -> None:
        super().__init__()
        self._client = client
        self._where = endpoint
        self._url = url
        self._bucket, self._key = split_url(url)
        self._etag = etag
        self._size = size
        self._head = self._tail = b""
        if fetched is not None:
            self._size = fetched.size
            self._etag = self._etag or fetched.etag
            self._head, self._tail = fetched.head, fetched.tail
        self._stream = stream
        self._pos = 0

    @property
    def etag(self) -> str | None:
        return self._etag

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def size(self) -> int:
        """The object's size; when unknown, one GET of its last PARQUET_TAIL_BYTES (kept)."""
        if self._size is None:
            got = self._get(f"bytes=-{PARQUET_TAIL_BYTES}")
            if self._size is None:  # an empty object answers 416 (or 200 without a range)
                self._size = 0 if got is None else len(got)
            if got is not None and len(got) <= self._size:
                self._tail = got
        return self._size

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            base = 0
        elif whence == io.SEEK_CUR:
            base = self._pos
        else:
            base = self.size()
        if base + offset < 0:
            raise OSError(f"{self._url}: negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        if self._size is None and size is not None and size >= 0:
            # a stream of unknown size: the first GET's Content-Range tells it, no extra request
            data = self.read_range(self._pos, self._pos + size)
            if self._size is None:  # past the end (416), or an answer without Content-Range
                self._size = self._pos + len(data)
            self._pos += len(data)
            return data
        total = self.size()
        start = self._pos
        end = total if size is None or size < 0 else min(total, start + size)
        tail_start = total - len(self._tail)
        pieces: list[bytes] = []
        pos = start
        while pos < end:
            if pos < len(self._head):
                piece = self._head[pos : min(end, len(self._head))]
            elif self._tail and pos >= tail_start:
                piece = self._tail[pos - tail_start : end - tail_start]
            else:
                piece = self.read_range(pos, min(end, tail_start) if self._tail else end)
            if not piece:
                break
            pieces.append(piece)
            pos += len(piece)
        self._pos = pos
        if self._stream and pos >= len(self._head):
            self._head = b""
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read_range(self, start: int, stop: int) -> bytes:
        """Bytes [start, stop) in one ranged GET (fewer at the object's end)."""
        if stop <= start:
            return b""
        return self._get(f"bytes={start}-{stop - 1}") or b""

    def _get(self, byte_range: str) -> bytes | None:
        """One pinned ranged GET; None when the range is past the end (416)."""
        kwargs: dict[str, Any] = {"Bucket": self._bucket, "Key": self._key, "Range": byte_range}
        if self._etag:
            kwargs["IfMatch"] = f'"{self._etag}"'
        for attempt in range(1, _READ_ATTEMPTS + 1):
            try:
                response = self._client.get_object(**kwargs)
            except ClientError as exc:
                code = error_code(exc)
                if code in PRECONDITION_FAILED:
                    raise SourceChangedError(changed_message(self._url, self._etag)) from None
                if code in RANGE_PAST_END:
                    return None
                raise SourceError(self._error(exc)) from exc
            except BotoCoreError as exc:
                raise SourceError(self._error(exc)) from exc
            self._check_version(response)
            try:
                data: bytes = response["Body"].read()
            except (ResponseStreamingError, IncompleteReadError, ReadTimeoutError) as exc:
                response["Body"].close()
                if attempt == _READ_ATTEMPTS:
                    raise SourceError(
                        f"{self._url}: the connection broke off while reading it "
                        f"({type(exc).__name__}, {_READ_ATTEMPTS} attempts); rerun later."
                    ) from exc
                continue
            return data
        raise AssertionError("unreachable")  # pragma: no cover

    def _check_version(self, response: dict[str, Any]) -> None:
        """Pin to the answer's ETag (or check it: a store may ignore If-Match) and learn the
        size from Content-Range."""
        etag = str(response.get("ETag") or "").strip('"') or None
        if self._etag is None:
            self._etag = etag
        elif etag is not None and etag != self._etag:
            response["Body"].close()
            raise SourceChangedError(changed_message(self._url, self._etag))
        total = str(response.get("ContentRange") or "").rpartition("/")[2]
        if total.isdigit():
            if self._size is not None and int(total) != self._size:
                response["Body"].close()
                raise SourceChangedError(changed_message(self._url, self._etag))
            self._size = int(total)

    def _error(self, exc: BaseException) -> str:
        return client_error_message(self._url, exc, listing=False, endpoint=self._where)

    def close(self) -> None:
        self._head = self._tail = b""
        super().close()
