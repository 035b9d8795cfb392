"""The HTTP side of Moesif's Collector API: `CollectorClient`, a plain HTTP/1.1 client (the
standard library's `http.client`) with one keep-alive connection per sending thread, posting
gzip JSON bodies to `{base}/v1/actions/batch` with `Content-Type: application/json`,
`Content-Encoding: gzip` and the application id in `X-Moesif-Application-Id`. The id is held
by the client only: never in its repr, a message or a log line (an answer quoting it is
redacted)."""

from __future__ import annotations

import http.client
import ssl
import threading
from typing import NamedTuple
from urllib.parse import urlsplit

from connectors.moesif_batching import BATCH_PATH

APP_ID_HEADER = "X-Moesif-Application-Id"
_ANSWER_BYTES = 64 * 1024  # read at most this much of an answer's body for its message
TRANSPORT_ERRORS = (OSError, http.client.HTTPException)


class Answer(NamedTuple):
    status: int
    retry_after: float | None
    detail: str  # the start of the answer's body, redacted


class CollectorClient:
    """POSTs gzip bodies to one Collector API; thread-safe (a connection per thread)."""

    def __init__(
        self,
        base_url: str,
        app_id: str,
        *,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 20.0,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("the Collector API URL must be http:// or https://")
        if not app_id:
            raise ValueError("the Moesif application id is empty")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._path = parts.path.rstrip("/") + BATCH_PATH
        port = f":{parts.port}" if parts.port else ""
        self.endpoint = f"{parts.scheme}://{parts.hostname}{port}"  # no credentials, no path
        self._app_id = app_id
        self._connect_timeout = connect_timeout_s
        self._read_timeout = read_timeout_s
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[http.client.HTTPConnection] = []
        self._ssl = ssl.create_default_context() if self._https else None

    def __repr__(self) -> str:  # never the application id
        return f"CollectorClient(endpoint={self.endpoint!r})"

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        if self._https:
            conn = http.client.HTTPSConnection(
                self._host, self._port, timeout=self._connect_timeout, context=self._ssl
            )
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self._connect_timeout)
        conn.connect()
        if conn.sock is not None:
            conn.sock.settimeout(self._read_timeout)
        self._local.conn = conn
        with self._lock:
            self._connections.append(conn)
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()
            with self._lock:
                if conn in self._connections:
                    self._connections.remove(conn)

    def post(self, gz_body: bytes) -> Answer:
        """One POST of a gzip JSON array; its answer. Raises a `TRANSPORT_ERRORS` error when
        the connection failed, dropped or timed out (the connection is then discarded)."""
        headers = {
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
            "Accept": "application/json",
            APP_ID_HEADER: self._app_id,
        }
        try:
            conn = self._connection()
            conn.request("POST", self._path, body=gz_body, headers=headers)
            response = conn.getresponse()
            data = response.read(_ANSWER_BYTES)
            rest = response.read()  # drain it: the connection is reused
            if response.will_close or rest:
                self._drop()
        except TRANSPORT_ERRORS:
            self._drop()
            raise
        return Answer(
            response.status, _retry_after(response.getheader("Retry-After")), self._redact(data)
        )

    def _redact(self, data: bytes) -> str:
        text = data[:300].decode("utf-8", "replace").replace(self._app_id, "<application id>")
        return " ".join(text.split())[:200]

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()


def _retry_after(value: str | None) -> float | None:
    """Seconds of a Retry-After header given in seconds (a date is ignored)."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return max(seconds, 0.0)


__all__ = ["APP_ID_HEADER", "TRANSPORT_ERRORS", "Answer", "CollectorClient"]
