"""`fmnist-serve`: start the prediction service with uvicorn; every setting is a flag, over FASHIONFLOW_* variables."""

from __future__ import annotations

import argparse
import logging.config
import os
import socket
import sys
import tempfile
from typing import Any, Literal

from pydantic import Field, ValidationError
from pydantic_settings import CliSettingsSource, SettingsConfigDict

from fmnist import __version__

from .request_ids import log_config
from .settings import Settings


# The options `fmnist-serve` has beyond the service's settings.
class ServeOptions(Settings):
    """Serve the FashionFlow model over REST. Without --run or --tag, the flow's latest successful run."""

    model_config = SettingsConfigDict(
        env_prefix="FASHIONFLOW_", extra="ignore", cli_kebab_case=True, cli_implicit_flags=True
    )

    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = Field(
        default="info", description="Log level of the service and uvicorn."
    )


def parse(argv: list[str] | None) -> ServeOptions:
    """Every setting as a flag (pydantic-settings' CLI source), over the FASHIONFLOW_* variables and the defaults;
    each flag's help names its default and its variable. Exits with a usage error naming a bad value."""
    parser = argparse.ArgumentParser(prog="fmnist-serve", description=ServeOptions.__doc__)
    parser.add_argument("--version", action="version", version=f"fmnist-serve (fashionflow {__version__})")
    source: CliSettingsSource[ServeOptions] = CliSettingsSource(ServeOptions, root_parser=parser)
    for action in parser._actions:
        if action.dest in ServeOptions.model_fields and action.dest != "log_level":
            action.help = f"{action.help or ''} [env FASHIONFLOW_{action.dest.upper()}]".strip()
    try:
        return ServeOptions(_cli_settings_source=source(args=sys.argv[1:] if argv is None else argv))
    except ValidationError as err:
        parser.error(str(err))


def _environment_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def main(argv: list[str] | None = None) -> None:
    """Parse the flags, validate the settings, and run uvicorn on serving.app:app."""
    options = parse(argv)
    # The settings given become environment variables, so that every uvicorn worker process sees the same ones.
    for name in options.model_fields_set - {"log_level"}:
        value = getattr(options, name)
        if value is not None:
            os.environ[f"FASHIONFLOW_{name.upper()}"] = _environment_value(value)
    settings = Settings()
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Every worker's counts in one place, so that /metrics is the whole server's (serving/metrics.py).
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="fashionflow-metrics-")
    logging.config.dictConfig(log_config(options.log_level))
    problem = missing_model(settings)
    if problem is not None:
        print("fmnist-serve: " + " ".join(problem.split()), file=sys.stderr)  # one line, whatever the cause
        sys.exit(1)
    run_uvicorn("serving.app:app", settings.host, settings.port, settings.workers, options.log_level, settings=settings)


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
