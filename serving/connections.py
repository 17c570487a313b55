"""uvicorn's h11 protocol with a deadline for the request head.

uvicorn closes a keep-alive connection that stays idle after a response (`timeout_keep_alive`), but waits without
limit for a request head: a client that connects and sends nothing, or sends its headers a byte at a time, holds its
connection (and a slot of `limit_concurrency`) for good. Here the head must be complete within `header_timeout_seconds`
of the connection opening, or of the first byte of a keep-alive connection's next request. A connection that sent
nothing is closed as uvicorn closes an idle keep-alive one; one that sent part of a head is answered 408 naming the
problem, then closed. The body has its own deadline in the app (`serving.limits.BodyLimitMiddleware`).

serving/cli.py passes this class to uvicorn as its `http` protocol, so h11 is used even where httptools is installed.
"""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


@functools.cache
def header_timeout_seconds() -> float:
    """The setting, read once per worker process (every uvicorn worker sees the FASHIONFLOW_* variables)."""
    from .settings import Settings

    return Settings().header_timeout_seconds


class HeadTimeoutProtocol(H11Protocol):
    """H11Protocol that gives up on a request head not received in full within `header_timeout_seconds`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_timeout = header_timeout_seconds()
        self.head_timer: asyncio.TimerHandle | None = None
        self.head_started = False  # some bytes of the awaited head have arrived

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._awaiting_head():
            self.head_started = self.head_started or bool(data)
            if self.head_timer is None:
                self._arm()
        else:
            self._disarm()
            self.head_started = False

    def on_response_complete(self) -> None:
        self._disarm()  # between requests uvicorn's keep-alive timeout runs; the next head's deadline starts with it
        self.head_started = False
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _awaiting_head(self) -> bool:
        return self.conn.their_state is h11.IDLE and not self.transport.is_closing()

    def _arm(self) -> None:
        self._disarm()
        self.head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_timed_out(self) -> None:
        self.head_timer = None
        if not self._awaiting_head():
            return
        if self.head_started:
            detail = f"request head (request line and headers) not received in full within {self.head_timeout:g}s"
            body = json.dumps({"detail": detail}).encode()
            head = (
                "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
            )
            self.transport.write(head.encode() + body)
        self.transport.close()
