"""Following the tag: the service switches to a newly tagged run's model without a restart and without dropping a
request.

Every `reload_interval` seconds the follower asks Metaflow which run the tag (e.g. `production`) is on. When that is
not the run being served, it loads and warms the new model on its own thread, beside the one serving, and only then
switches: `install` replaces `app.state.predictor`, one reference assignment on the event loop. A request takes that
reference once, when its dependencies are resolved (`serving.deps.get_predictor`), and uses it to the end, so it is
answered wholly by the model it started with and names that model's run. A model that cannot be found, loaded or
warmed up is not switched to: the old one keeps serving, the failure is logged and counted
(`fashionflow_model_reload_failures_total{stage}`), and the same run is tried again after a growing pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from fastapi import FastAPI

from .drift import DriftMonitor
from .inference import Predictor
from .model_loading import ModelLoadError, ServedModel, find_run, load_model
from .settings import Settings

log = logging.getLogger("serving")

# A run that failed to load is tried again after interval x 2^failures, at most this many seconds later.
MAX_RETRY_SECONDS = 600.0


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
        # One thread for Metaflow lookups, loading and warm-up: off the event loop, and never two loads at once.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-follower")
        self.task: asyncio.Task[None] | None = None
        self.failures: dict[str, _Failure] = {}
        self.last_lookup_error: str | None = None
        self.checks = 0
        self.switches = 0

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
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
            except Exception:  # never let one bad check end the following
                log.exception("model follower: unexpected error; the current model keeps serving")

    async def check(self) -> bool:
        """Look up the tag once; switch if it names another run that loads and warms up. True if it switched."""
        loop = asyncio.get_running_loop()
        metrics = self.app.state.metrics
        self.checks += 1
        try:
            pathspec = await loop.run_in_executor(self.executor, self._lookup)
        except Exception as err:
            metrics.model_reload_failures.labels("find").inc()
            if str(err) != self.last_lookup_error:
                log.warning("cannot look up %s (%s); the current model keeps serving", self.following, err)
            self.last_lookup_error = str(err)
            return False
        self.last_lookup_error = None
        current = self.app.state.predictor.served.run_pathspec if self.app.state.predictor is not None else None
        if pathspec == current:
            return False
        failure = self.failures.get(pathspec)
        if failure is not None and time.monotonic() < failure.retry_at:
            return False
        log.info("%s is now %s (serving %s): loading it beside the current model", self.following, pathspec, current)
        start = time.perf_counter()
        try:
            served = await loop.run_in_executor(self.executor, load_model, self.settings, pathspec)
        except Exception as err:
            self._failed("load", pathspec, err, current)
            return False
        try:
            predictor, seconds = await loop.run_in_executor(self.executor, warm, served, self.settings)
        except Exception as err:
            self._failed("warm_up", pathspec, err, current)
            return False
        install(self.app, predictor)
        self.switches += 1
        metrics.model_switches.inc()
        self.failures.pop(pathspec, None)
        log.info(
            "switched the served model from %s to %s (loaded and warmed in %.2fs, warm-up %.2fs)",
            current,
            pathspec,
            time.perf_counter() - start,
            seconds,
        )
        return True

    def _lookup(self) -> str:
        return str(find_run(self.settings).pathspec)

    def _failed(self, stage: str, pathspec: str, err: Exception, current: str | None) -> None:
        self.app.state.metrics.model_reload_failures.labels(stage).inc()
        previous = self.failures.get(pathspec)
        count = previous.count + 1 if previous else 1
        delay = min(self.interval * 2**count, max(MAX_RETRY_SECONDS, self.interval))
        self.failures[pathspec] = _Failure(count, time.monotonic() + delay, str(err))
        kind = "load" if isinstance(err, ModelLoadError) or stage == "load" else stage
        log.error(
            "not switching to %s: %s failed (%s: %s); still serving %s; next try in %.0fs",
            pathspec,
            kind,
            type(err).__name__,
            err,
            current,
            delay,
        )
