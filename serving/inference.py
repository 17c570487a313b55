"""The served model behind the routes: scores from `fmnist.release.classifier` (calibrated probabilities and whether the
model may be relied on), shaped into response bodies; the image the model saw, for answers that ask for it; and the
optional micro-batcher of concurrent single-image requests."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from fmnist.release.classifier import Scored

from .model_loading import ServedModel
from .schemas import ClassProbability, Prediction, SinglePrediction


class Predictor:
    """The served model: `fmnist.release.classifier.Classifier` scores, this turns the scores into response bodies."""

    def __init__(self, served: ServedModel) -> None:
        self.served = served
        self.record = served.record
        self.classifier = served.classifier
        self.class_names = list(served.record.class_names)

    def score(
        self, pixels: np.ndarray, empty: Sequence[bool] | None = None, photo: Sequence[bool] | None = None
    ) -> list[Scored]:
        """(B, 28, 28) uint8 images, light on dark -> one `Scored` per image (see `Classifier.score`: `photo` marks
        the uploads the normaliser transformed, held to the policy's photo threshold)."""
        return self.classifier.score(pixels, empty, photo)

    def warm_up(self, max_batch: int, rounds: int = 3) -> float:
        """Run the batch sizes the service will see, so the first real request pays no one-off costs; seconds.

        Raises RuntimeError when the model's answers are not probabilities (NaN weights, a broken record): such a
        model must not be served."""
        start = time.perf_counter()
        for _ in range(rounds):
            for size in sorted({1, min(8, max_batch), max_batch}):
                scored = self.score(np.zeros((size, 28, 28), dtype=np.uint8))
                probs = np.stack([s.probabilities for s in scored])
                if probs.shape != (size, len(self.class_names)) or not np.isfinite(probs).all():
                    raise RuntimeError(
                        f"warm-up: the model's answers are not {len(self.class_names)} finite"
                        f" probabilities per image (shape {probs.shape})"
                    )
        return time.perf_counter() - start

    @property
    def run(self) -> str:
        """The run pathspec of the served model, named in every prediction response."""
        return self.served.run_pathspec

    def describe(
        self,
        scored: Scored,
        top_k: int,
        inverted: bool | None = None,
        filename: str | None = None,
        run: str | None = None,
    ) -> Prediction:
        """One scored image -> the response's prediction; a `SinglePrediction` naming `run` when one is given."""
        probs = scored.probabilities.tolist()  # Python floats: pydantic checks them without numpy conversions
        order = np.argsort(-scored.probabilities, kind="stable")[:top_k].tolist()
        best = order[0]
        names = self.class_names
        fields = {
            "class_index": best,
            "class_name": names[best],
            "probability": probs[best],
            "confident": scored.confident,
            "class_confident": scored.class_confident,
            "unsure_reason": scored.unsure_reason,
            "family": scored.family,
            "top_k": [ClassProbability(class_index=i, class_name=names[i], probability=probs[i]) for i in order],
            "probabilities": probs,
            "inverted": inverted,
            "filename": filename,
        }
        return Prediction(**fields) if run is None else SinglePrediction(**fields, run=run)


def png_data_url(pixels: np.ndarray) -> str:
    """A (28, 28) uint8 model input -> `data:image/png;base64,...`, an 8-bit grayscale PNG. PNG is lossless, so a
    client decodes exactly the pixels the network received (a JPEG would show its own artefacts instead)."""
    if pixels.dtype != np.uint8 or pixels.ndim != 2:
        raise ValueError(f"expected a 2-D uint8 image, got {pixels.shape} {pixels.dtype}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG")  # 2-D uint8: mode L
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class MicroBatcher:
    """Server-side batching of concurrent single-image requests.

    Requests put their image on a queue and await a future; one task takes everything queued (up to `max_batch`)
    and runs it as one forward pass on a dedicated model thread, so the event loop keeps parsing requests while
    the model computes. Nothing waits for a batch to fill: under light load every batch is a single image and
    the only cost is the hop to the model thread.
    """

    def __init__(self, predictor: Predictor, max_batch: int) -> None:
        self.predictor = predictor
        self.max_batch = max_batch
        self.queue: asyncio.Queue[tuple[np.ndarray, tuple[bool, bool], Predictor, asyncio.Future[Scored]]] = (
            asyncio.Queue()
        )
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._serve())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.executor.shutdown(wait=True)

    async def score(
        self, pixels: np.ndarray, empty: bool = False, predictor: Predictor | None = None, photo: bool = False
    ) -> Scored:
        """(28, 28) uint8 -> its `Scored`, computed in a batch with concurrent requests, by `predictor` (the one the
        request started with; default the batcher's current one), so a request is answered by one model even while
        the service switches to another. `empty` and `photo` as in `Classifier.score`."""
        future: asyncio.Future[Scored] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((pixels, (empty, photo), predictor or self.predictor, future))
        return await future

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            while len(items) < self.max_batch and not self.queue.empty():
                items.append(self.queue.get_nowait())
            # One forward pass per model: during a switch, requests of the old and the new model may be queued.
            for predictor in {id(item[2]): item[2] for item in items}.values():
                await self._score_group(loop, predictor, [item for item in items if item[2] is predictor])

    async def _score_group(self, loop: asyncio.AbstractEventLoop, predictor: Predictor, items: list) -> None:
        batch = np.stack([pixels for pixels, _, _, _ in items])  # (B, 28, 28)
        empty = [flags[0] for _, flags, _, _ in items]
        photo = [flags[1] for _, flags, _, _ in items]
        try:
            scored = await loop.run_in_executor(self.executor, predictor.score, batch, empty, photo)
        except Exception as err:  # hand the failure to every waiting request rather than kill the loop
            for *_, future in items:
                if not future.done():
                    future.set_exception(err)
            return
        for (*_, future), row in zip(items, scored, strict=True):
            if not future.done():
                future.set_result(row)
