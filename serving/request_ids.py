"""Request ids: each request carries one, so it can be followed from the client through the access log and any
error line of the service.

An `X-Request-ID` the client sends (1-128 visible ASCII characters, what proxies and gateways generate) is kept;
otherwise the service makes one (32 hex digits). Either way the answer carries it in `X-Request-ID`, and, with the
logging `fmnist-serve` sets up (`log_config`), every line written while the request is handled, uvicorn's access
line and any error line included, ends with `request_id=<id>`. The id lives in a context variable: each request is
its own asyncio task, so ids never leak from one request to another. With plain `uvicorn serving.app:app` the ids
are echoed but not logged unless its `--log-config` names a format with `%(request_id)s` and this filter.
"""

from __future__ import annotations

import copy
import logging
import re
import uuid
from contextvars import ContextVar
from typing import Any

HEADER = "x-request-id"
# Visible ASCII, as the header values gateways (Envoy, nginx, Heroku's router) generate; anything else is replaced.
VALID = re.compile(r"[\x21-\x7e]{1,128}")

_current: ContextVar[str | None] = ContextVar("request_id", default=None)


def current_request_id() -> str | None:
    """The id of the request being handled, or None outside a request."""
    return _current.get()


class RequestIdMiddleware:
    """Takes the client's `X-Request-ID` or makes one, and echoes it in the answer's headers."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((value for name, value in scope["headers"] if name == HEADER.encode()), b"")
        text = given.decode("latin-1")
        request_id = text if VALID.fullmatch(text) else uuid.uuid4().hex
        # Not reset afterwards: uvicorn logs a request's access line and any exception from its own task, after the
        # app returns; the next request is another task, with its own copy of the context.
        _current.set(request_id)
        header = (HEADER.encode(), request_id.encode())

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), header]}
            await send(message)

        await self.app(scope, receive, send_with_id)


class RequestIdFilter(logging.Filter):
    """Gives each record `request_id`: the id of the request being handled, or "-" outside one."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _current.get() or "-"
        return True


SERVICE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s request_id=%(request_id)s"


def log_config(level: str = "info") -> dict[str, Any]:
    """The service's logging as `logging.config.dictConfig` takes it: uvicorn's own configuration (its access and
    error lines), and the service's loggers through the root handler, every line ending in `request_id=<id>`."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"request_id": {"()": RequestIdFilter}}
    for formatter in config["formatters"].values():
        formatter["fmt"] += " request_id=%(request_id)s"
    config["formatters"]["service"] = {"format": SERVICE_FORMAT}
    config["handlers"]["service"] = {
        "class": "logging.StreamHandler",
        "formatter": "service",
        "stream": "ext://sys.stderr",
    }
    for handler in config["handlers"].values():
        handler["filters"] = ["request_id"]
    config["root"] = {"handlers": ["service"], "level": level.upper()}
    return config
