"""`fmnist-serve`: start the prediction service with uvicorn; options override the FASHIONFLOW_* variables."""

from __future__ import annotations

import argparse
import logging.config
import os
import socket
import sys
from typing import Any

from pydantic import ValidationError

from .request_ids import log_config
from .settings import Settings

OPTIONS = {  # option -> setting (and FASHIONFLOW_<SETTING> variable)
    "run": "Run pathspec to serve, e.g. FashionFlow/1795693605953813.",
    "tag": "Serve the newest successful run with this tag, and follow it: switch to a newly tagged run without a"
    " restart (e.g. --tag production).",
    "reload_seconds": "Seconds between checks for a newly tagged run (default 30 with --tag; 0 = off).",
    "flow": "Flow name (default FashionFlow).",
    "metadata": "Metaflow metadata provider, e.g. local@/path/to/dir or service@https://...",
    "host": "Interface to listen on (default 127.0.0.1; 0.0.0.0 in a container).",
    "port": "Port (default 8000).",
    "workers": "uvicorn worker processes (default 1).",
    "device": "auto, cpu or cuda (default auto).",
    "runtime": "What runs the model: auto (ONNX Runtime on a CPU when installed, else torch), onnxruntime or torch.",
}


def main(argv: list[str] | None = None) -> None:
    """Parse options, validate the settings, and run uvicorn on serving.app:app."""
    parser = argparse.ArgumentParser(
        prog="fmnist-serve",
        description="Serve the FashionFlow model over REST. Without --run or --tag, the latest successful run.",
    )
    for name, text in OPTIONS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, help=text)
    parser.add_argument("--log-level", default="info", help="uvicorn log level (default info).")
    args = parser.parse_args(argv)
    # Options become environment variables so that every uvicorn worker process sees the same settings.
    for name in OPTIONS:
        value = getattr(args, name)
        if value is not None:
            os.environ[f"FASHIONFLOW_{name.upper()}"] = str(value)
    try:
        settings = Settings()
    except ValidationError as err:
        parser.error(str(err))
    logging.config.dictConfig(log_config(args.log_level))
    problem = missing_model(settings)
    if problem is not None:
        print("fmnist-serve: " + " ".join(problem.split()), file=sys.stderr)  # one line, whatever the cause
        sys.exit(1)
    run_uvicorn("serving.app:app", settings.host, settings.port, settings.workers, args.log_level, settings=settings)


def missing_model(settings: Settings) -> str | None:
    """One line saying why there is no run to serve and what to do about it, or None when there is one.

    Looked up before uvicorn starts (one metadata query), so the commonest first-run mistake, serving before training,
    ends with that line instead of a worker's traceback. Loading the model itself stays in the service's lifespan."""
    from .model_loading import ModelLoadError, NoRunError, find_run

    try:
        find_run(settings)
    except NoRunError as err:
        remedy = f"tag a successful run {settings.tag!r} or " if settings.tag else ""
        return f"nothing to serve: {err}. To make a run, {remedy}train one with `make run`."
    except ModelLoadError as err:
        return f"cannot serve: {err}."
    return None


def run_uvicorn(
    app: str,
    host: str,
    port: int,
    workers: int = 1,
    log_level: str = "info",
    access_log: bool = True,
    settings: Settings | None = None,
) -> None:
    """uvicorn serving `app` (an import string) with `workers` processes, within the connection bounds of `settings`
    (default: read from the FASHIONFLOW_* variables): keep-alive time, concurrency limit, backlog, request head size,
    and the request head's deadline (`serving.connections`).

    Several workers share one listening socket that this function binds itself: uvicorn's own (0.54) is created
    without IPPROTO_TCP, so asyncio never sets TCP_NODELAY on its connections and every keep-alive response waits
    for the client's delayed ACK (uvicorn issue #3149). A worker that dies is replaced by uvicorn's supervisor
    (`benchmarks/serve_faults.py`, scenario worker-killed, measures how soon).
    """
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from .connections import HeadTimeoutProtocol

    settings = settings or Settings()
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        workers=workers,
        log_config=log_config(log_level),  # every line ends in the request's id (serving.request_ids)
        log_level=log_level,
        access_log=access_log,
        http=HeadTimeoutProtocol,
        timeout_keep_alive=settings.timeout_keep_alive,
        limit_concurrency=settings.limit_concurrency,
        backlog=settings.backlog,
        h11_max_incomplete_event_size=settings.max_header_bytes,
    )
    if workers == 1:
        uvicorn.Server(config).run()
        return
    Multiprocess(config, sockets=[listening_socket(config)]).run()


def listening_socket(config: Any) -> socket.socket:
    """The socket uvicorn binds for `config` (a `uvicorn.Config`), marked as TCP, so that asyncio sets TCP_NODELAY on
    every connection it accepts."""
    bound = config.bind_socket()
    if bound.family not in (socket.AF_INET, socket.AF_INET6):
        return bound
    sock = socket.socket(bound.family, bound.type, socket.IPPROTO_TCP, fileno=bound.detach())
    sock.set_inheritable(True)
    return sock


if __name__ == "__main__":
    main()
