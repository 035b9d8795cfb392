"""A TCP proxy in front of a local endpoint that can go silent (tests of a lost endpoint).

Until `drop()` it forwards every connection to `target`; after it, every connection, open or
new, is accepted and never answered (what a dead route or a stateful firewall dropping packets
looks like to a client: its read times out).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Self
from urllib.parse import urlsplit


class BlackholeProxy:
    def __init__(self, target_url: str) -> None:
        parts = urlsplit(target_url)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.dropped = threading.Event()
        self.closing = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.threads: list[threading.Thread] = []

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def drop(self) -> None:
        self.dropped.set()

    def __enter__(self) -> Self:
        self._spawn(self._accept)
        return self

    def __exit__(self, *exc: object) -> None:
        self.closing.set()
        self.sock.close()

    def _spawn(self, fn: object, *args: object) -> None:
        thread = threading.Thread(target=fn, args=args, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self.threads.append(thread)

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.dropped.is_set():
                self._spawn(self._hold, conn)
                continue
            upstream = socket.create_connection(self.target)
            self._spawn(self._pipe, conn, upstream)
            self._spawn(self._pipe, upstream, conn)

    def _hold(self, conn: socket.socket) -> None:
        with conn:
            self.closing.wait()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(0.2)
        try:
            while not self.closing.is_set():
                try:
                    data = src.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                if self.dropped.is_set():
                    self.closing.wait()  # swallow it: never forwarded, never answered
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.close()
