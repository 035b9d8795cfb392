"""The start/stop/context-manager shape every local stand-in shares."""

from __future__ import annotations

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
