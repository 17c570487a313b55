"""The model on its device: normalise a batch exactly as training did and return calibrated probabilities."""

from __future__ import annotations

import asyncio
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from fmnist.calibration import softmax
from fmnist.model import normalize

from .model_loading import ServedModel


class Predictor:
    """Runs the served network in inference mode; probabilities are softmax(logits / temperature)."""

    def __init__(self, served: ServedModel) -> None:
        self.served = served
        self.record = served.record
        self.class_names = list(served.record.class_names)

    @torch.inference_mode()
    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """(B, 28, 28) uint8 images, light on dark -> (B, num_classes) float32 calibrated probabilities."""
        x = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.served.device, non_blocking=True)
        logits = self.served.network(normalize(x, self.record.mean, self.record.std))
        # The same calibrated softmax the evaluation report used, so served probabilities match the report's.
        return softmax(logits.float().cpu(), self.record.temperature).float().numpy()

    def warm_up(self, max_batch: int, rounds: int = 3) -> float:
        """Run the batch sizes the service will see, so the first real request pays no one-off costs; seconds."""
        start = time.perf_counter()
        for _ in range(rounds):
            for size in sorted({1, min(8, max_batch), max_batch}):
                self.probabilities(np.zeros((size, 28, 28), dtype=np.uint8))
        return time.perf_counter() - start

    def describe(self, probs: np.ndarray, top_k: int) -> dict:
        """One row of probabilities -> the prediction fields of the response."""
        order = np.argsort(-probs, kind="stable")[:top_k]
        best = int(order[0])
        return {
            "class_index": best,
            "class_name": self.class_names[best],
            "probability": float(probs[best]),
            "top_k": [
                {"class_index": int(i), "class_name": self.class_names[i], "probability": float(probs[i])}
                for i in order
            ],
            "probabilities": [float(p) for p in probs],
        }


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
        self.queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = asyncio.Queue()
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

    async def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """(28, 28) uint8 -> (num_classes,) probabilities, computed in a batch with concurrent requests."""
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((pixels, future))
        return await future

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            while len(items) < self.max_batch and not self.queue.empty():
                items.append(self.queue.get_nowait())
            batch = np.stack([pixels for pixels, _ in items])
            try:
                probs = await loop.run_in_executor(self.executor, self.predictor.probabilities, batch)
            except Exception as err:  # hand the failure to every waiting request rather than kill the loop
                for _, future in items:
                    if not future.done():
                        future.set_exception(err)
                continue
            for (_, future), row in zip(items, probs, strict=True):
                if not future.done():
                    future.set_result(row)
