"""A local stand-in for Moesif's Collector API: ``POST /v1/actions/batch``.

`CollectorStandin` is a threaded HTTP/1.1 server on 127.0.0.1 (keep-alive) that checks each
request as Moesif's Collector would, as far as the project knows it (/work/shared/FACTS.md):

* ``X-Moesif-Application-Id`` must equal the stand-in's application id (constant-time compare);
  missing or different: 401.
* ``Content-Encoding: gzip`` bodies are decompressed (bounded); ``identity``/absent is plain.
* The body must be a JSON array of valid actions (`receiver.validate_action`): otherwise 400
  (the real API's "bad parameter"), and nothing of that request counts.
* Success: 201 with an empty body; every action's ``transaction_id`` is recorded.

Faults, set by the test (thread-safe): `fail_next` queues answers for the next requests (a status
code, ``"drop"`` to close the connection without answering, with an optional Retry-After);
`fail_from` answers a status to every request once `n` requests were accepted (401 after some
chunks); `too_large_over` answers 413 to any body over `n` uncompressed bytes.

The request log holds status, action count, body sizes and encoding: never the application id.
Read-only HTTP views for another process: ``GET /stats``, ``GET /transaction_ids``, ``GET
/healthz``.

``count_only=True`` (for benchmarks, `bench/bench_collector.py`): the body is still gunzipped,
but instead of parsing and validating every action it only finds each ``"transaction_id":"…"``
with one regular expression over the body (C speed) and keeps those ids: no actions, no bodies,
no validation. It is only right for bodies whose values never contain that text (the benchmark's
generated data). In its own process::

    MOESIF_APPLICATION_ID=... python -m tests.standins.collector [--port 0] [--count-only]

prints its URL on one line and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import re
import signal
import sys
import threading
import zlib
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from tests.standins.lifecycle import StartStop, serve_in_thread, stop_serving
from tests.standins.receiver import validate_action

__all__ = ["APP_ID_HEADER", "BATCH_PATH", "CollectorStandin"]

APP_ID_HEADER = "X-Moesif-Application-Id"
BATCH_PATH = "/v1/actions/batch"
MAX_BODY_BYTES = 64 * 1024 * 1024  # after decompression; well over the 15 MB batch limit
_TID_RE = re.compile(
    rb'"transaction_id":"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"'
)


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _gunzip(body: bytes) -> bytes:
    decomp = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = decomp.decompress(body, MAX_BODY_BYTES + 1)
    except zlib.error as exc:
        raise _Refused(400, f"body is not valid gzip: {exc}") from None
    if len(out) > MAX_BODY_BYTES or decomp.unconsumed_tail:
        raise _Refused(413, "decompressed body too large")
    if not decomp.eof:
        raise _Refused(400, "body is truncated gzip")
    return out


def _actions(body: bytes) -> list[dict[str, Any]]:
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _Refused(400, f"body is not JSON: {exc}") from None
    if not isinstance(doc, list):
        raise _Refused(400, "body is not a JSON array of actions")
    for index, action in enumerate(doc):
        problem = validate_action(action)
        if problem is not None:
            raise _Refused(400, f"action {index}: {problem}")
    return doc


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], owner: CollectorStandin) -> None:
        self.owner = owner
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "CollectorStandin/1"

    def log_message(self, format: str, *args: Any) -> None:
        """No per-request access log."""

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        owner = self.server.owner
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/stats":
            self._send(200, json.dumps(owner.stats()).encode())
        elif path == "/transaction_ids":
            text = "".join(f"{t}\n" for t in sorted(owner.transaction_ids()))
            self._send(200, text.encode())
        elif path == "/healthz":
            self._send(200, b'"ok"')
        else:
            self._send(404, b'{"message":"not found"}')

    def do_POST(self) -> None:
        owner = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        if self.path.split("?", 1)[0].rstrip("/") != BATCH_PATH:
            self._send(404, b'{"message":"not found"}')
            return
        fault = owner._next_fault()
        if fault == "drop":
            owner._log({"status": "dropped", "bytes": len(raw)})
            self.close_connection = True
            self.connection.close()
            return
        encoding = (self.headers.get("Content-Encoding") or "identity").strip().lower()
        entry: dict[str, Any] = {"bytes": len(raw), "encoding": encoding}
        try:
            owner._check_app_id(self.headers.get(APP_ID_HEADER))
            body = _gunzip(raw) if encoding == "gzip" else raw
            if encoding not in ("gzip", "identity"):
                raise _Refused(400, f"unsupported Content-Encoding {encoding}")
            entry["body_bytes"] = len(body)
            if isinstance(fault, tuple):
                raise _Refused(fault[0], "injected fault")
            owner._check_size(len(body))
            if owner.count_only:
                tids = [t.decode() for t in _TID_RE.findall(body)]
                entry.update(status=201, actions=len(tids))
                owner._accept_ids(tids, entry)
                self._send(201)
                return
            actions = _actions(body)
        except _Refused as exc:
            entry.update(status=exc.status, message=str(exc))
            owner._log(entry)
            headers = {}
            if exc.status in (429, 503) and owner.retry_after is not None:
                headers["Retry-After"] = str(owner.retry_after)
            self._send(exc.status, json.dumps({"message": str(exc)}).encode(), headers)
            return
        entry.update(status=201, actions=len(actions))
        owner._accept(actions, entry, body)
        self._send(201)


class CollectorStandin(StartStop):
    """Threaded stand-in for Moesif's Collector API; see the module docstring."""

    def __init__(
        self, app_id: str, host: str = "127.0.0.1", port: int = 0, *, count_only: bool = False
    ) -> None:
        if not app_id:
            raise ValueError("the stand-in needs an application id")
        self._app_id = app_id
        self.count_only = count_only
        self._host, self._port = host, port
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.retry_after: float | None = None
        self._faults: deque[tuple[int] | str] = deque()
        self._fail_from: tuple[int, int] | None = None
        self._too_large_over: int | None = None
        self._init_counters()

    def __repr__(self) -> str:  # never the application id
        return f"CollectorStandin(url={self.url if self._server else None!r})"

    def _init_counters(self) -> None:
        self._accepted_requests = 0
        self._tids: list[str] = []
        self._actions: list[dict[str, Any]] = []
        self._log_entries: list[dict[str, Any]] = []
        self._bodies: list[bytes] = []

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> Self:
        if self._server is None:
            self._server = _Server((self._host, self._port), self)
            self._thread = serve_in_thread(self._server, "collector-standin")
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        stop_serving(server, thread)
        self._server = self._thread = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("CollectorStandin is not started")
        return f"http://{self._host}:{self._server.server_address[1]}"

    # -- faults ----------------------------------------------------------------------------------
    def fail_next(self, *faults: int | str, retry_after: float | None = None) -> None:
        """Answer the next requests with these statuses (or ``"drop"``: close the connection
        without an answer), one each, in order; then normally again."""
        with self._lock:
            for fault in faults:
                self._faults.append(fault if isinstance(fault, str) else (int(fault),))
            self.retry_after = retry_after

    def fail_from(self, accepted: int, status: int) -> None:
        """Answer `status` to every request once `accepted` requests were accepted."""
        with self._lock:
            self._fail_from = (accepted, status)

    def too_large_over(self, nbytes: int | None) -> None:
        """Answer 413 to every body over `nbytes` uncompressed bytes (None: no such limit)."""
        with self._lock:
            self._too_large_over = nbytes

    def reset(self) -> None:
        with self._lock:
            self._faults.clear()
            self._fail_from = self._too_large_over = self.retry_after = None
            self._init_counters()

    # -- the handler's side ----------------------------------------------------------------------
    def _next_fault(self) -> tuple[int] | str | None:
        with self._lock:
            if self._faults:
                return self._faults.popleft()
            if self._fail_from is not None and self._accepted_requests >= self._fail_from[0]:
                return (self._fail_from[1],)
            return None

    def _check_app_id(self, presented: str | None) -> None:
        if presented is None:
            raise _Refused(401, "application id missing")
        if not hmac.compare_digest(presented.encode(), self._app_id.encode()):
            raise _Refused(401, "application id not recognized")

    def _check_size(self, nbytes: int) -> None:
        with self._lock:
            limit = self._too_large_over
        if limit is not None and nbytes > limit:
            raise _Refused(413, f"body of {nbytes} bytes over {limit}")

    def _accept(self, actions: list[dict[str, Any]], entry: dict[str, Any], body: bytes) -> None:
        with self._lock:
            self._bodies.append(body)
            self._accepted_requests += 1
            self._tids.extend(a["transaction_id"] for a in actions)
            self._actions.extend(actions)
            self._log_entries.append(entry)

    def _accept_ids(self, tids: list[str], entry: dict[str, Any]) -> None:
        with self._lock:
            self._accepted_requests += 1
            self._tids.extend(tids)
            self._log_entries.append(entry)

    def _log(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._log_entries.append(entry)

    # -- what arrived ----------------------------------------------------------------------------
    def transaction_ids(self) -> set[str]:
        with self._lock:
            return set(self._tids)

    def delivered_ids(self) -> list[str]:
        """Every accepted action's transaction_id, in arrival order (duplicates kept)."""
        with self._lock:
            return list(self._tids)

    def actions(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._actions)

    def bodies(self) -> list[bytes]:
        """The uncompressed body of every accepted request, byte for byte."""
        with self._lock:
            return list(self._bodies)

    def request_log(self) -> list[dict[str, Any]]:
        """One entry per POST: status (or "dropped"), actions, bytes, body_bytes, encoding."""
        with self._lock:
            return [dict(e) for e in self._log_entries]

    def stats(self) -> dict[str, Any]:
        with self._lock:
            statuses: dict[str, int] = {}
            for e in self._log_entries:
                statuses[str(e["status"])] = statuses.get(str(e["status"]), 0) + 1
            return {
                "requests": len(self._log_entries),
                "accepted_requests": self._accepted_requests,
                "statuses": statuses,
                "actions": len(self._tids),
                "unique_transaction_ids": len(set(self._tids)),
                "duplicates": len(self._tids) - len(set(self._tids)),
            }


def main(argv: list[str] | None = None) -> int:
    """Serve in this process (its own GIL) until SIGTERM/SIGINT; print the URL first."""
    parser = argparse.ArgumentParser(prog="python -m tests.standins.collector")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--count-only", action="store_true", help="see the module docstring")
    args = parser.parse_args(argv)
    app_id = os.environ.get("MOESIF_APPLICATION_ID")
    if not app_id:
        parser.error("set MOESIF_APPLICATION_ID (the id the stand-in accepts)")
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    with CollectorStandin(app_id, port=args.port, count_only=args.count_only) as standin:
        print(standin.url, flush=True)
        done.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
