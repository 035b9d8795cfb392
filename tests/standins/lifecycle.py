"""The start/stop/context-manager shape every local stand-in shares."""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Self


class StartStop:
    """`with Server() as s:` starts the server and stops it at the end of the block."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve_in_thread(server: socketserver.BaseServer, name: str) -> threading.Thread:
    """Serve `server` on a daemon thread (polling for shutdown every 0.1 s)."""
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, name=name, daemon=True
    )
    thread.start()
    return thread


def stop_serving(
    server: socketserver.BaseServer,
    thread: threading.Thread | None,
    before_close: Callable[[], None] | None = None,
) -> None:
    """Stop `server` (served by `thread`), close its socket and wait for the thread."""
    server.shutdown()
    if before_close is not None:
        before_close()
    server.server_close()
    if thread is not None:
        thread.join(timeout=5)
