"""ASGI middleware that refuses request bodies over the size limit with 413, before the app parses them, and bodies
that take too long to arrive with 408."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any


class BodyTooLarge(Exception):
    """Raised from `receive` once a streamed body passes the limit."""


class BodyTooSlow(Exception):
    """Raised from `receive` once a body has not arrived in full within its time."""


async def send_problem(send: Any, status: int, detail: str, close: bool = False) -> None:
    """A JSON error response {"detail": ...} straight through ASGI; `close`: the connection is closed after it (the
    rest of a request body will not be read)."""
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """413 for a Content-Length over `max_bytes`; a body streamed without one is counted as it arrives and cut off
    at the limit, whatever the endpoint was doing with it. A body not received in full within `max_seconds` of the
    request's head (a client trickling it a byte at a time) is answered 408 and its connection closed: uvicorn itself
    waits for a body without limit."""

    def __init__(
        self, app: Any, max_bytes: int, max_seconds: float | None = None, path_limits: dict[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_seconds = max_seconds
        # Tighter limits for some paths: a JSON route whose largest valid body is far below the general limit.
        self.path_limits = path_limits or {}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.path_limits.get(scope["path"], self.max_bytes)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                shown = declared[:40].decode(errors="replace")
                await send_problem(send, 400, f"invalid Content-Length header {shown!r}")
                return
            if length > limit:
                await send_problem(send, 413, f"request body of {length} bytes is over the limit of {limit}")
                return
        received = 0
        exceeded = False
        too_slow = False
        started = False
        body_done = False  # the deadline holds for the body only, not for a later wait for the client's disconnect
        begun = time.monotonic()
        deadline = None if self.max_seconds is None else asyncio.get_running_loop().time() + self.max_seconds

        async def counting_receive() -> dict:
            nonlocal received, exceeded, too_slow, body_done
            if body_done:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                too_slow = exceeded = True
                raise BodyTooSlow from None
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message: dict) -> None:
            nonlocal started
            if exceeded:
                return  # whatever the app says about a half-read body, the answer is 413
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if too_slow and not started:
            await send_problem(
                send,
                408,
                f"request body not received in full within {self.max_seconds:g}s"
                f" ({received} bytes arrived in {time.monotonic() - begun:.1f}s)",
                close=True,
            )
        elif exceeded and not started:
            await send_problem(send, 413, f"request body is over the limit of {limit} bytes")
