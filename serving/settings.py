"""The service's settings: one pydantic-settings object read from FASHIONFLOW_* environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


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

    host: str = Field(default="127.0.0.1", description="Interface to listen on; 0.0.0.0 in a container.")
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64, description="uvicorn worker processes, each with its own model copy.")

    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto: CUDA if present, else CPU.")
    # One intra-op thread: a single 28x28 image is far too small for torch's thread pool to pay for itself, and
    # the event loop needs the other core.
    torch_threads: int = Field(default=1, ge=1, le=256)
    # Off by default: with the small CNN on 2 CPU cores, benchmarks/serve_load.py --compare-batching measured no
    # gain (a forward pass of one image costs well under the HTTP handling around it). On a GPU or with a wider
    # model the forward pass dominates and batching pays.
    batching: bool = Field(
        default=False, description="Batch concurrent single-image requests into one forward pass on a model thread."
    )

    # Limits. An upload of a full-resolution phone photo is a few MB; 10 MB leaves room without inviting abuse.
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, description="Largest request body accepted.")
    max_image_pixels: int = Field(
        default=40_000_000,
        ge=784,
        description="Largest decoded image (width x height) accepted: the decompression-bomb guard.",
    )
    max_batch: int = Field(default=64, ge=1, le=1024, description="Most images in one batch request.")
    default_top_k: int = Field(default=3, ge=1, le=10)

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.run is not None and not self.run.strip():
            raise ValueError("run must be a pathspec such as 'FashionFlow/123', not empty")
        return self
