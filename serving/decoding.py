"""The bounded pool that decodes uploads: back-pressure instead of a queue that grows.

An upload bigger than a thumbnail is decoded and normalised on one of `decode_threads` threads, never on the event
loop (`serving.routes.predict`). At most `decode_queue` more requests may wait for a thread, each for at most
`decode_wait_seconds`; a request beyond that is answered 503 with `Retry-After` at once, so a flood of expensive
uploads costs its senders retries, not everyone else their latency. A decode runs for at most `decode_seconds`: past
that its request is answered 422 naming the limit, and the decode itself stops at its next chunk of input or next
step (`fmnist.images.uploads.time_limit`; a decoder call already running in C finishes first, its thread staying
counted as busy until then). Threads, not processes: Pillow's decoders and
numpy's reductions release the GIL for the bulk of a decode, and a thread hands the decoded 28x28 result back
without pickling.

The decoding threads run at a lower scheduling priority than the event loop (DECODE_NICENESS): a decode is CPU bound
(a small PNG claiming a huge image inflates to all of its pixels), and at equal priority, on a busy machine, the
decoding threads take the cores the event loop needs to answer everyone else. A lower priority only changes who waits
when the cores are contended; with cores to spare, a decode runs as fast as before.

Memory of one worker process for decoding, at most: `decode_threads` x the peak of one decode (about 8 bytes a
pixel for an RGBA image and its premultiplied copy: `benchmarks/serve_decode.py` prints 307 MB for an RGBA PNG at the
40-megapixel limit, 101 MB for a 16-bit one, 41 MB for a grey one; about 9 for a palette image with transparency,
its indices besides: 344 MB at the limit, seen by `benchmarks/fuzz_uploads.py`), plus the small lane's
`decode_threads` decodes of at most `small_decode_pixels` each (9 MB at 1 megapixel), plus (`decode_threads` +
`decode_queue`) request bodies of at most `max_body_bytes` each per lane, held while they wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from fastapi import HTTPException

from fmnist.images.uploads import DecodeTooSlow, time_limit

from .metrics import ServiceMetrics

T = TypeVar("T")

log = logging.getLogger("serving")

# Seconds a refused client is asked to wait before retrying: a decode at the pixel limit takes well under one.
RETRY_AFTER_SECONDS = 1
# How much nicer than the worker the decoding threads run (Linux; elsewhere they run at the worker's priority). At 10
# the kernel weighs a decoding thread about a tenth of the event loop (its `sched_prio_to_weight` table), so a flood
# of huge images slows the decodes, not /health and /predict: `benchmarks/serve_faults.py --only hostile` measures
# both. Not 19: there neither fared better, and the slowest hostile upload took 4.7 s of its 5 s bound on 2 busy cores.
DECODE_NICENESS = 10


def lower_thread_priority(niceness: int) -> None:
    """Make the calling thread `niceness` nicer (at most 19). Linux applies `setpriority` to a single thread when
    given its thread id; other systems would apply it to the whole process, so there it does nothing."""
    if sys.platform != "linux" or niceness <= 0:
        return
    thread = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + niceness))
    except OSError as err:  # e.g. a sandbox forbidding it: decoding still works, at the worker's priority
        log.warning("decoding threads keep the worker's priority: setpriority failed: %s", err)


class DecodeLane:
    """`threads` decoding threads, `niceness` nicer than the worker, at most `queue` requests waiting for one, each at
    most `wait_seconds`; each decode given at most `decode_seconds`.

    Its counters are read and changed on the event loop only; the semaphore is released from the loop too (a
    thread's completion is handed over with `call_soon_threadsafe`), so no lock is needed."""

    def __init__(
        self,
        name: str,
        threads: int,
        queue: int,
        wait_seconds: float,
        metrics: ServiceMetrics,
        niceness: int = DECODE_NICENESS,
        decode_seconds: float | None = None,
    ) -> None:
        self.name, self.threads, self.capacity, self.wait_seconds = name, threads, threads + queue, wait_seconds
        self.decode_seconds = decode_seconds
        self.metrics = metrics
        self.executor = ThreadPoolExecutor(
            max_workers=threads,
            thread_name_prefix=f"decode-{name}",
            initializer=lower_thread_priority,
            initargs=(niceness,),
        )
        self.free = asyncio.Semaphore(threads)
        self.admitted = 0  # requests decoding or waiting to
        metrics.decodes_admitted.labels(name).set_function(lambda: self.admitted)

    async def run(self, function: Callable[..., T], *args: object) -> T:
        """`function(*args)` on a decoding thread, within `decode_seconds` (`DecodeTooSlow`, an upload error, past
        it); 503 with Retry-After when every slot is taken or no thread frees up within the wait. A decode whose
        request is cancelled or out of time runs to its end (or its next time check) and only then frees its thread,
        so the number of threads busy never exceeds `threads`."""
        if self.admitted >= self.capacity:
            self._refuse("full", f"all {self.capacity} slots of this worker's {self.name} decoding lane are taken")
        self.admitted += 1
        try:
            await self._acquire()
            loop = asyncio.get_running_loop()
            future = self.executor.submit(self._timed, function, *args)
            future.add_done_callback(lambda _: self._release(loop))
            try:
                # A thread was free, so the decode starts now: its time runs from here. Shielded: the thread's own
                # check ends it; cancelling the wrapper would only hide its outcome.
                async with asyncio.timeout(self.decode_seconds):
                    return await asyncio.shield(asyncio.wrap_future(future))
            except (TimeoutError, DecodeTooSlow):
                self.metrics.decode_timeouts.inc()
                raise DecodeTooSlow(
                    f"decoding took longer than the limit of {self.decode_seconds:g}s: send a smaller image, or a"
                    " PNG or baseline JPEG"
                ) from None
        finally:
            self.admitted -= 1

    def _release(self, loop: asyncio.AbstractEventLoop) -> None:
        """Free a thread's slot, from the thread that finished: on the loop, unless the loop has closed meanwhile (the
        app shut down while a decode past its time ran on)."""
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self.free.release)

    def _timed(self, function: Callable[..., T], *args: object) -> T:
        with time_limit(self.decode_seconds):
            return function(*args)

    async def _acquire(self) -> None:
        if not self.free.locked():
            await self.free.acquire()  # a thread is free: no timer to set up
            return
        try:
            # asyncio.timeout, not wait_for: a semaphore granted just as the timer fires is given back by `acquire`
            # itself on cancellation, never leaked.
            async with asyncio.timeout(self.wait_seconds):
                await self.free.acquire()
        except TimeoutError:
            self._refuse("wait", f"no thread of the {self.name} decoding lane came free within {self.wait_seconds:g}s")

    def _refuse(self, reason: str, why: str) -> None:
        self.metrics.decode_refusals.labels(self.name, reason).inc()
        raise HTTPException(
            503,
            f"service busy decoding other uploads ({why}); retry in {RETRY_AFTER_SECONDS}s",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class DecodePool:
    """Two lanes: uploads that decode to at most `small_pixels` (a phone photo's JPEG at its reduced size, an image a
    site has already resized) on `threads` threads of their own at the worker's priority, the rest on `threads` more,
    `niceness` nicer; so that a flood of huge images fills
    only the large lane, and everyone else's photos keep being answered. The lanes share the queue length, the wait
    and the time limit."""

    def __init__(
        self,
        threads: int,
        queue: int,
        wait_seconds: float,
        metrics: ServiceMetrics,
        niceness: int = DECODE_NICENESS,
        decode_seconds: float | None = None,
        small_pixels: int = 0,
    ) -> None:
        self.small_pixels = small_pixels
        self.large = DecodeLane("large", threads, queue, wait_seconds, metrics, niceness, decode_seconds)
        # At the worker's own priority: its decodes cost what the event loop's own work costs, and a nicer thread
        # starves whenever anything else wants the cores, refusing honest photos 503 (serve_soak.py beside a training
        # run showed it).
        # As many threads as the large lane: one thread (about 100 photos a second here) fell behind wrk's phone photos
        # in the soak.
        self.small = DecodeLane("small", threads, queue, wait_seconds, metrics, 0, decode_seconds)

    async def run(self, function: Callable[..., T], *args: object, pixels: int | None = None) -> T:
        """`function(*args)` on the lane for an upload decoding to `pixels` (the large lane when not given)."""
        small = pixels is not None and pixels <= self.small_pixels
        return await (self.small if small else self.large).run(function, *args)

    def shutdown(self) -> None:
        self.large.shutdown()
        self.small.shutdown()
