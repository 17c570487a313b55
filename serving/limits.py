"""ASGI middleware that refuses request bodies over the size limit with 413, before the app parses them."""

from __future__ import annotations

import json
from typing import Any


class BodyTooLarge(Exception):
    """Raised from `receive` once a streamed body passes the limit."""


async def send_problem(send: Any, status: int, detail: str) -> None:
    """A JSON error response {"detail": ...} straight through ASGI."""
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """413 for a Content-Length over `max_bytes`; a body streamed without one is counted as it arrives and cut off
    at the limit, whatever the endpoint was doing with it."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                shown = declared[:40].decode(errors="replace")
                await send_problem(send, 400, f"invalid Content-Length header {shown!r}")
                return
            if length > self.max_bytes:
                await send_problem(send, 413, f"request body of {length} bytes is over the limit of {self.max_bytes}")
                return
        received = 0
        exceeded = False
        started = False

        async def counting_receive() -> dict:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
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
        if exceeded and not started:
            await send_problem(send, 413, f"request body is over the limit of {self.max_bytes} bytes")
