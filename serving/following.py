"""Following the tag: the service switches to a newly tagged run's model without a restart and without dropping a
request.

Every `reload_interval` seconds the follower asks Metaflow which run the tag (e.g. `production`) is on. When that is
not the run being served, it loads and warms the new model on its own thread, beside the one serving, and only then
switches: `install` replaces `app.state.predictor`, one reference assignment on the event loop. A request takes that
reference once, when its dependencies are resolved (`serving.deps.get_predictor`), and uses it to the end, so it is
answered wholly by the model it started with and names that model's run. A model that cannot be found, loaded or
warmed up is not switched to: the old one keeps serving, the failure is logged and counted
(`fashionflow_model_reload_failures_total{stage}`), and the same run is tried again after a growing pause.

Nothing the follower waits for can hang it: the lookup, the load and the warm-up each run on a daemon thread and are
given up after `reload_timeout_seconds` (a datastore that stops answering). The thread of a call given up is left to
finish on its own; until it does, no other call starts (never two loads at once, never a pile of hung threads).
Whatever keeps the tag's run from being served is shown in /ready and /model (`following_problem`) and in
`fashionflow_model_stale`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import FastAPI

from .drift import DriftMonitor
from .inference import Predictor
from .model_loading import ModelLoadError, ServedModel, find_run, load_model
from .settings import Settings

log = logging.getLogger("serving")

# A run that failed to load is tried again after interval x 2^failures, at most this many seconds later.
MAX_RETRY_SECONDS = 600.0

T = TypeVar("T")


class ReloadTimeout(TimeoutError):
    """A lookup, load or warm-up of the follower ran past `reload_timeout_seconds`."""


def in_daemon_thread(function: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """`function(*args)` on a new daemon thread, as a future of the running loop. A daemon thread, not an executor's:
    an executor's threads are joined when the interpreter exits, so one stuck in a datastore read would keep the
    process from ever stopping."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)

    def target() -> None:
        try:
            result, error = function(*args), None
        except BaseException as err:  # handed to the awaiting coroutine, whatever it is
            result, error = None, err
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody is waiting any more
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=target, name="model-follower", daemon=True).start()
    return future


def install(app: FastAPI, predictor: Predictor) -> None:
    """Make `predictor` the one that answers: the switch itself, on the event loop (or before it serves)."""
    state = app.state
    previous = state.predictor
    state.predictor = predictor  # the switch: requests from now on take this reference
    if state.batcher is not None:
        state.batcher.predictor = predictor
    if state.drift is None:
        state.drift = DriftMonitor(state.settings, predictor.served)
    else:
        state.drift.reset(predictor.served)
    metrics = state.metrics
    if previous is not None:
        with contextlib.suppress(KeyError):
            metrics.model_info.remove(previous.served.run_pathspec)
    metrics.model_info.labels(predictor.served.run_pathspec).set(1)
    metrics.model_switched_at.set(time.time())
    state.model_since = time.time()


def warm(served: ServedModel, settings: Settings) -> tuple[Predictor, float]:
    """A predictor for `served`, warmed up (every batch size the service sees) and checked; seconds of warm-up."""
    predictor = Predictor(served)
    return predictor, predictor.warm_up(settings.max_batch)


@dataclass
class _Failure:
    count: int
    retry_at: float  # time.monotonic()
    message: str


class ModelFollower:
    """The background task that keeps the served model on the run the tag names."""

    def __init__(self, app: FastAPI, settings: Settings) -> None:
        self.app, self.settings = app, settings
        self.interval = settings.reload_interval
        self.timeout = settings.reload_timeout_seconds
        self.task: asyncio.Task[None] | None = None
        self.failures: dict[str, _Failure] = {}
        self.last_lookup_error: str | None = None
        self.checks = 0
        self.switches = 0
        # The lookup, load or warm-up in progress (on its own daemon thread), and what it is: one at a time.
        self.pending: asyncio.Future[Any] | None = None
        self.pending_what = ""
        self.pending_since = 0.0
        # Why the served model is not the one the tag names, or why that is unknown; None when all is well.
        self.problem: str | None = None

    @property
    def following(self) -> str:
        return f"tag {self.settings.tag!r}" if self.settings.tag else f"latest successful {self.settings.flow} run"

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run(), name="model-follower")
        log.info("following %s: checking every %gs", self.following, self.interval)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
            except Exception:  # never let one bad check end the following
                log.exception("model follower: unexpected error; the current model keeps serving")

    async def check(self) -> bool:
        """Look up the tag once; switch if it names another run that loads and warms up. True if it switched."""
        metrics = self.app.state.metrics
        self.checks += 1
        if self.pending is not None and not self.pending.done():
            self._set_problem(
                f"{self.pending_what} has not returned after {time.monotonic() - self.pending_since:.0f}s (given up"
                f" after {self.timeout:g}s); nothing else is tried until it does"
            )
            return False
        try:
            pathspec = await self._call("timeout", f"the lookup of {self.following}", self._lookup)
        except Exception as err:
            metrics.model_reload_failures.labels("timeout" if isinstance(err, ReloadTimeout) else "find").inc()
            if str(err) != self.last_lookup_error:
                log.warning("cannot look up %s (%s); the current model keeps serving", self.following, err)
            self.last_lookup_error = str(err)
            self._set_problem(f"cannot look up {self.following}: {err}")
            return False
        self.last_lookup_error = None
        current = self.app.state.predictor.served.run_pathspec if self.app.state.predictor is not None else None
        if pathspec == current:
            self._set_problem(None)
            return False
        failure = self.failures.get(pathspec)
        if failure is not None and time.monotonic() < failure.retry_at:
            return False
        return await self._switch(pathspec, current)

    async def _switch(self, pathspec: str, current: str | None) -> bool:
        """Load and warm up `pathspec` beside the current model, then serve it; False (the current model serving on)
        when either fails or runs past the timeout."""
        log.info("%s is now %s (serving %s): loading it beside the current model", self.following, pathspec, current)
        start = time.perf_counter()
        try:
            served = await self._call("load", f"loading {pathspec}", load_model, self.settings, pathspec)
        except Exception as err:
            self._failed("timeout" if isinstance(err, ReloadTimeout) else "load", pathspec, err, current)
            return False
        try:
            predictor, seconds = await self._call("warm_up", f"warming up {pathspec}", warm, served, self.settings)
        except Exception as err:
            self._failed("timeout" if isinstance(err, ReloadTimeout) else "warm_up", pathspec, err, current)
            return False
        install(self.app, predictor)
        self.switches += 1
        self.app.state.metrics.model_switches.inc()
        self.failures.pop(pathspec, None)
        self._set_problem(None)
        log.info(
            "switched the served model from %s to %s (loaded and warmed in %.2fs, warm-up %.2fs)",
            current,
            pathspec,
            time.perf_counter() - start,
            seconds,
        )
        return True

    async def _call(self, stage: str, what: str, function: Callable[..., T], *args: Any) -> T:
        """`function(*args)` on a daemon thread, off the event loop; `ReloadTimeout` after `self.timeout` seconds,
        leaving the thread to finish on its own (`check` starts nothing else until it has)."""
        self.pending, self.pending_what, self.pending_since = in_daemon_thread(function, *args), what, time.monotonic()
        try:
            async with asyncio.timeout(self.timeout):
                return await asyncio.shield(self.pending)  # shielded: the future says when the thread is done
        except TimeoutError:
            raise ReloadTimeout(f"{what} took longer than {self.timeout:g}s ({stage})") from None

    def _set_problem(self, problem: str | None) -> None:
        """Record why the tag's run is not served (None: it is); shown by /ready, /model and the stale gauge."""
        self.problem = problem
        self.app.state.metrics.model_stale.set(0 if problem is None else 1)

    def _lookup(self) -> str:
        return str(find_run(self.settings).pathspec)

    def _failed(self, stage: str, pathspec: str, err: Exception, current: str | None) -> None:
        self.app.state.metrics.model_reload_failures.labels(stage).inc()
        previous = self.failures.get(pathspec)
        count = previous.count + 1 if previous else 1
        delay = min(self.interval * 2**count, max(MAX_RETRY_SECONDS, self.interval))
        self.failures[pathspec] = _Failure(count, time.monotonic() + delay, str(err))
        kind = "load" if isinstance(err, ModelLoadError) or stage == "load" else stage
        self._set_problem(f"not switched to {pathspec}: {kind} failed ({err}); next try in {delay:.0f}s")
        log.error(
            "not switching to %s: %s failed (%s: %s); still serving %s; next try in %.0fs",
            pathspec,
            kind,
            type(err).__name__,
            err,
            current,
            delay,
        )
