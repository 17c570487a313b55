"""The service's settings: one pydantic-settings object read from FASHIONFLOW_* environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fmnist.images.uploads import DEFAULT_MAX_PIXELS


class Settings(BaseSettings):
    """Which model to serve, where to listen, and the limits that keep malformed requests cheap.

    Every field can be set from the environment with the FASHIONFLOW_ prefix, e.g. FASHIONFLOW_RUN=FashionFlow/123.
    """

    model_config = SettingsConfigDict(env_prefix="FASHIONFLOW_", extra="ignore")

    # Model selection: an explicit run wins over a tag; with neither, the flow's latest successful run is served.
    flow: str = Field(default="FashionFlow", description="Metaflow flow whose runs hold the model record.")
    run: str | None = Field(default=None, description="Run pathspec 'FashionFlow/<run-id>' (or just the run id).")
    tag: str | None = Field(default=None, description="Serve the newest successful run carrying this tag.")
    metadata: str | None = Field(
        default=None,
        description="Metaflow metadata provider, e.g. 'local@/path/to/dir-holding-.metaflow' or 'service@https://..'."
        " Unset: found as Metaflow finds it (METAFLOW_* variables, ~/.metaflowconfig, a .metaflow folder above the"
        " working directory).",
    )

    # Following the tag: the service looks for a newly tagged run at this interval and switches to it without a
    # restart. None: every 30 s when a tag is set (a promotion reaches users within half a minute, and a lookup of the
    # tag costs one metadata query), off otherwise; 0: off. With `run` set there is nothing to follow.
    reload_seconds: float | None = Field(
        default=None,
        ge=0,
        le=86_400,
        description="Seconds between checks for a newly tagged run (default 30 with a tag, else off; 0 = off).",
    )

    # Loading and warming up a newly tagged run's model (or looking the tag up) that takes longer than this is given
    # up: the current model keeps serving, and /ready, /model and fashionflow_model_stale say so. A minute leaves room
    # for a slow object store, not for a hung one.
    reload_timeout_seconds: float = Field(
        default=60.0, gt=0, le=3600, description="Longest a tag switch's lookup, load or warm-up may take."
    )

    host: str = Field(default="127.0.0.1", description="Interface to listen on; 0.0.0.0 in a container.")
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64, description="uvicorn worker processes, each with its own model copy.")

    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto: CUDA if present, else CPU.")
    # auto: the model's graph in ONNX Runtime on a CPU (one call instead of eager torch's per-operator overhead,
    # fmnist/release/scoring_graph.py), torch on a GPU or where onnx/onnxruntime are not installed (with a log line).
    runtime: Literal["auto", "onnxruntime", "torch"] = Field(
        default="auto",
        description="What runs the model: auto (ONNX Runtime on CPU when installed, else torch), onnxruntime or torch.",
    )
    # One intra-op thread: a single 28x28 image is far too small for a thread pool to pay for itself, and the event
    # loop (or another worker) needs the other core. Applies to torch and to ONNX Runtime.
    torch_threads: int = Field(default=1, ge=1, le=256, description="Threads of the model runtime per worker.")
    # Off by default: with the model in ONNX Runtime on 2 CPU cores, `benchmarks/serve_wrk.py --compare-batching` (its
    # "server-side batching" line) measured +13% single-image throughput but a p99 of 113 ms instead of 15 ms (past
    # the 50 ms target). On a GPU or with a wider model the forward pass dominates and batching pays.
    batching: bool = Field(
        default=False, description="Batch concurrent single-image requests into one forward pass on a model thread."
    )

    # Limits. An upload of a full-resolution phone photo is a few MB; 10 MB leaves room without inviting abuse.
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, description="Largest request body accepted.")
    max_image_pixels: int = Field(
        default=DEFAULT_MAX_PIXELS,
        ge=784,
        description="Largest decoded image (width x height) accepted: the decompression-bomb guard.",
    )
    max_batch: int = Field(default=64, ge=1, le=1024, description="Most images in one batch request.")
    # A batch's images together: decoding time grows with pixels, not bytes, so a batch of small files claiming huge
    # images is refused (413) from their headers, before any is decoded. Two images at the pixel limit.
    max_request_pixels: int = Field(
        default=80_000_000, ge=784, description="Most decoded pixels (width x height, summed) in one request."
    )

    # Slow and idle clients. uvicorn's h11 protocol waits without limit for a request head (a connection that sends
    # nothing, or trickles its headers, is held for good) and for a request body; these bound both, per request.
    # A complete request head (request line and headers) must arrive within this many seconds of the connection
    # opening or of the first byte of a keep-alive connection's next request; else 408 and the connection is closed.
    header_timeout_seconds: float = Field(
        default=10.0, gt=0, le=600, description="Longest time a client may take to send a request head (then 408)."
    )
    # The whole body must arrive within this many seconds of its head; else 408. 30 s lets a body at the 10 MB limit
    # arrive at 2.8 Mbit/s and a 3 MB phone photo at 0.8 Mbit/s; a client trickling a byte at a time is cut off.
    body_timeout_seconds: float = Field(
        default=30.0, gt=0, le=3600, description="Longest time a request body may take to arrive (then 408)."
    )
    # uvicorn's bounds, passed by serving/cli.py run_uvicorn; each holds per worker process.
    # An idle keep-alive connection is closed this many seconds after its last response (uvicorn's default).
    timeout_keep_alive: int = Field(default=5, ge=1, le=600, description="Seconds an idle keep-alive connection lives.")
    # Past this many open connections or requests in progress, each new request is answered 503 at once rather than
    # let memory grow with them. Idle connections count too (an attacker's as well), so the limit sits far above what
    # honest clients hold (a load balancer's pool, wrk's 16 in the benchmarks) plus the slow connections that the
    # timeouts above let live: `benchmarks/serve_faults.py` holds 550 hostile ones beside its traffic. None: no limit.
    limit_concurrency: int | None = Field(
        default=2000, ge=1, description="Open connections or requests per worker past which requests get 503."
    )
    # Connections the kernel queues before a worker accepts them (uvicorn's default; the kernel caps it at
    # net.core.somaxconn). A burst beyond it is refused by the kernel, not held.
    backlog: int = Field(default=2048, ge=1, le=65_535, description="Pending connections queued by the kernel.")
    # Largest request head h11 buffers before answering 400 (h11's default 16 kB): the headers of an upload are a few
    # hundred bytes.
    max_header_bytes: int = Field(
        default=16 * 1024, ge=1024, le=1024 * 1024, description="Largest request head (line and headers) accepted."
    )

    # Decoding (serving/decoding.py): uploads past a thumbnail are decoded on these threads, never on the event loop.
    # Two: with one worker on 2 cores, one thread decodes while the event loop and the model use the other core, and a
    # second keeps a slow decode from holding up every other upload.
    decode_threads: int = Field(default=2, ge=1, le=64, description="Threads decoding uploads, per worker.")
    # Requests allowed to wait for a decoding thread; one more is answered 503 with Retry-After at once.
    decode_queue: int = Field(default=8, ge=0, le=10_000, description="Uploads that may wait for a decoding thread.")
    # How long a waiting request may wait for a thread before it is answered 503 (a decode at the pixel limit takes
    # well under a second: benchmarks/serve_decode.py).
    decode_wait_seconds: float = Field(
        default=1.0, gt=0, le=60, description="Longest wait for a decoding thread before 503."
    )
    # Uploads decoding to at most this many pixels (a phone's JPEG at its reduced decoding size, a picture a site has
    # resized) get a decoding lane of their own, `decode_threads` more threads with their own queue: without it, a
    # flood of huge images kept the decoding threads busy and honest photos were answered 503
    # (`benchmarks/serve_soak.py`). A decode this size takes milliseconds, so the lane drains fast.
    small_decode_pixels: int = Field(
        default=1_000_000, ge=0, le=100_000_000, description="Largest decode (pixels) on the small uploads' lane."
    )
    # How long one decode may run before its request is answered 422 and the decode stopped at its next check
    # (serving/decoding.py). Twice the slowest decode of an upload within the limits seen under a flood of hostile
    # uploads on 2 busy cores (4.7 s, serving/decoding.py's DECODE_NICENESS): what runs longer is a pathological file.
    decode_seconds: float = Field(
        default=10.0, gt=0, le=600, description="Longest a decode may run before 422 (time limit per decode)."
    )
    default_top_k: int = Field(default=3, ge=1, le=10)

    # Drift signals over a sliding window of recent predictions (GET /drift, fashionflow_drift_* gauges). 1000
    # predictions: enough that an in-distribution window stays well inside the thresholds below (sampling noise
    # alone, 1000 draws from the prior, moves the class divergence a small fraction of its threshold), few enough
    # that a shift shows within minutes.
    drift_window: int = Field(default=1000, ge=10, le=1_000_000, description="Predictions in the drift window.")
    # No signal is judged on fewer predictions than this: a handful of requests says nothing about a distribution.
    drift_min_samples: int = Field(default=100, ge=1, description="Predictions needed before drift is judged.")
    # Jensen-Shannon divergence (bits) of predicted classes from the training prior: 0.1 is, for example, a third of
    # the traffic moving to one class; one class only is ~0.76.
    drift_class_divergence: float = Field(default=0.1, gt=0, le=1)
    # Unsure answers above the validation share by more than this share of the rest (15% of the answers that were
    # confident there): the model is less sure of the traffic.
    drift_unsure_increase: float = Field(default=0.15, gt=0, le=1)
    # Most uploads being product photos (a garment darker than its backdrop, negated by the normalisation): the
    # traffic is no longer Fashion-MNIST-like scans, where the photo suite, not the test set, predicts accuracy.
    drift_inverted_share: float = Field(default=0.5, gt=0, le=1)
    # Mean pixel or foreground share of the model's input moved by half a reference standard deviation (a medium
    # effect size; a window of 100 in-distribution images has a standard error of 0.1).
    drift_input_shift: float = Field(default=0.5, gt=0)

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.run is not None and not self.run.strip():
            raise ValueError("run must be a pathspec such as 'FashionFlow/123', not empty")
        return self

    @property
    def reload_interval(self) -> float:
        """Seconds between checks for a newly tagged run; 0 when the service does not follow a tag."""
        if self.run:
            return 0.0
        if self.reload_seconds is None:
            return 30.0 if self.tag else 0.0
        return self.reload_seconds
