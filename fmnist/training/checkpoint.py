"""Training checkpoints: everything needed to continue a trial where it stopped, and whose trial it is.

A checkpoint is not a model record (`fmnist.release.model_record`, what the service loads): it carries the optimiser,
the learning-rate schedule, the weight average, every random-number generator the trial draws from and the history, so
that a trial interrupted after epoch k (a spot instance reclaimed, a killed process) and resumed goes on exactly as an
uninterrupted one would. It also carries the trial's identity (hyper-parameters, seed, data, code version, torch
version, device, precision), and a store refuses to resume a state whose identity differs.

What "exactly" means:
- On a CPU, a resumed trial ends with bit for bit the weights of an uninterrupted one
  (`tests/training/test_checkpoint.py`).
- On a GPU, the batch order, the augmentation draws and the dropout masks are the same draws (the trial's generator
  lives on the device and is restored, and so is the device's own CUDA generator that dropout draws from), and the
  state at the checkpoint is an exact copy. The arithmetic after it is bit for bit the same only where the kernels
  are deterministic: by default cuDNN and cuBLAS may pick kernels that add in a run-dependent order (atomic adds in
  convolution backward passes), so a resumed trial, like any two uninterrupted runs, differs from an uninterrupted
  one in the last bits, and that difference grows over the remaining epochs. With `compute.deterministic: true`
  (`deterministic_kernels`) those kernels are replaced by deterministic ones, and a resumed trial is bit for bit an
  uninterrupted one on the same GPU model, driver and CUDA/cuDNN/torch build; a retry that lands on another GPU
  model runs other kernels and matches only to rounding. Only the CPU claims run in the tests; the GPU ones hold
  by construction (the saved CUDA state is checked for its structure on a CPU).

Two files are kept: the latest state and the one saved before it, so a latest file that cannot be read (truncated,
corrupted in storage, an older format) costs the epochs since the previous save instead of the whole trial.

Where checkpoints live is the caller's business: `CheckpointStore` is a directory plus a hook called after each
save, so the flow can mirror them to Metaflow's datastore (local or S3; `flows/fashion_checkpoints.py`) and put them
back in the directory when a task is retried, while this package knows nothing of Metaflow.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import random
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fmnist.core.config import HParams
from fmnist.core.data import Splits
from fmnist.core.provenance import code_version

log = logging.getLogger(__name__)

FILE_NAME = "training_state.pt"  # the latest state
PREVIOUS_FILE_NAME = "training_state.previous.pt"  # the state saved before it: the fall-back
FILE_NAMES = (FILE_NAME, PREVIOUS_FILE_NAME)  # newest first
# Version 2 added the trial's identity and the generators beyond torch's CPU ones; a version-1 file is refused
# (read as unreadable), since resuming it would restart the CUDA generators from another state.
FORMAT = "fashionflow.training-state/2"
RNG_KEYS = frozenset({"torch_cpu", "torch_cuda", "generators", "numpy", "python"})


@dataclass
class TrainingState:
    """A trial's state after `epoch` completed epochs; tensors on the CPU."""

    epoch: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    schedule: dict[str, Any]
    rng: dict[str, Any]  # every generator the trial draws from (`capture_rng`)
    identity: dict[str, Any] = field(default_factory=dict)  # whose trial this is (`trial_identity`)
    ema: dict[str, torch.Tensor] | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0

    def to_bytes(self) -> bytes:
        """Serialise with torch.save; `from_bytes` reads it back with weights_only=True (no arbitrary unpickling)."""
        buffer = io.BytesIO()
        torch.save({"format": FORMAT, **self.__dict__}, buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> TrainingState:
        """Parse bytes written by `to_bytes`; raises ValueError naming the problem on anything else.

        Every member's CRC is checked first: torch.load does not, so a byte flipped in storage inside a tensor would
        load silently as a changed weight or generator state."""
        try:
            damaged = zipfile.ZipFile(io.BytesIO(blob)).testzip()
        except Exception as err:  # not a zip archive at all, or one cut short
            raise ValueError(f"not a FashionFlow training checkpoint: {_reason(err)}") from None
        if damaged is not None:
            raise ValueError(f"a damaged training checkpoint: {damaged} fails its CRC check")
        try:
            data = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"not a FashionFlow training checkpoint: {_reason(err)}") from None
        found = data.pop("format", None) if isinstance(data, dict) else None
        if found != FORMAT:
            raise ValueError(f"not a FashionFlow training checkpoint of format {FORMAT!r} (format {found!r})")
        try:
            state = cls(**data)
        except TypeError as err:
            raise ValueError(f"a malformed training checkpoint: {err}") from None
        if not isinstance(state.rng, dict) or not set(state.rng) >= RNG_KEYS:
            raise ValueError(f"a training checkpoint without the generator states {sorted(RNG_KEYS)}")
        return state


def _reason(err: Exception) -> str:
    """The telling line of a load error: torch's weights-only refusals open with paragraphs of advice."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return next((line for line in lines if line.startswith("WeightsUnpickler error")), lines[0] if lines else repr(err))


def splits_fingerprint(splits: Splits) -> str:
    """SHA-256 of the arrays a trial trains and validates on.

    The arrays rather than the dataset's file fingerprint: they also reflect the split's seed, validation size and
    subset, any of which makes a saved state another trial's. Hashing 60,000 images takes about a tenth of a second.
    """
    digest = hashlib.sha256()
    arrays = [splits.train_images, splits.train_labels, splits.val_images, splits.val_labels]
    if splits.photo_images is not None and splits.photo_right is not None:
        arrays += [splits.photo_images, splits.photo_right]
    for array in arrays:
        digest.update(str((array.shape, array.dtype.str)).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def trial_identity(
    hp: HParams, seed: int, splits: Splits, device: torch.device, amp: torch.dtype | None
) -> dict[str, Any]:
    """What a saved state must match to be resumed: same trial, data, code and numerics.

    The device type and torch version are part of it because a CPU generator state cannot continue a CUDA stream
    (nor the other way round), and another torch build may run other kernels.
    """
    return {
        "hparams": hp.model_dump(mode="json"),
        "seed": seed,
        "data": splits_fingerprint(splits),
        "code_version": code_version(),
        "torch": str(torch.__version__),  # a plain str: weights_only loading refuses torch's TorchVersion
        "device": device.type,
        "amp": str(amp) if amp is not None else "off",
    }


def identity_difference(expected: dict[str, Any], found: dict[str, Any]) -> str | None:
    """The first field in which `found` differs from `expected`, described for a log line; None when none does."""
    for key, want in expected.items():
        got = found.get(key)
        if got == want:
            continue
        if isinstance(want, dict) and isinstance(got, dict):
            name = next(k for k in sorted(want.keys() | got.keys()) if want.get(k) != got.get(k))
            return f"{key}.{name} differs ({got.get(name)!r} in the checkpoint, {want.get(name)!r} here)"
        return f"{key} differs ({_short(got)} in the checkpoint, {_short(want)} here)"
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "...'"


def capture_rng(device: torch.device, generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """The state of every generator a trial draws from, as CPU tensors and plain numbers.

    - torch_cpu: torch's global CPU generator (dropout on a CPU, weight initialisation);
    - torch_cuda: the CUDA generator of `device` (dropout on a GPU); None on a CPU;
    - generators: the trial's own `torch.Generator`s by name (batch order, shifts, flips, photometric draws),
      whatever device they live on;
    - numpy, python: the global NumPy and `random` generators, seeded by `seed_everything`; the loop draws nothing
      from them today, and saving them keeps that true of any augmentation that starts to.
    """
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    return {
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "generators": {name: g.get_state().cpu() for name, g in generators.items()},
        # Tensors and numbers rather than NumPy arrays and tuples: weights_only loading accepts nothing else.
        "numpy": {
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
    }


def restore_rng(state: dict[str, Any], device: torch.device, generators: dict[str, torch.Generator]) -> None:
    """Put every generator back as `capture_rng` saw it; ValueError when the state lacks one this trial uses."""
    missing = sorted(set(generators) - set(state["generators"]))
    if missing:
        raise ValueError(f"the checkpoint has no state for the generators {missing}")
    if device.type == "cuda" and state["torch_cuda"] is None:
        raise ValueError("the checkpoint has no CUDA generator state: it was saved on a CPU")
    torch.set_rng_state(state["torch_cpu"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state["torch_cuda"], device)
    for name, generator in generators.items():
        generator.set_state(state["generators"][name])
    numpy = state["numpy"]
    np.random.set_state(
        ("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"], numpy["cached_gaussian"])
    )
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss_next"]))


@contextlib.contextmanager
def deterministic_kernels(enabled: bool) -> Iterator[None]:
    """Within the block, with `enabled`, only deterministic cuDNN, cuBLAS and torch kernels; flags restored after.

    Off by default (`compute.deterministic`), because deterministic convolution kernels can be slower and the
    default profile's speed matters more than the last bits of a resumed GPU trial. Benchmark mode stays off either
    way: nothing in the project turns it on, and its autotuning would pick kernels by timing, differently per process.
    An operation with no deterministic kernel warns (warn_only) instead of failing the trial. cuBLAS needs
    CUBLAS_WORKSPACE_CONFIG before its first use; a value already in the environment is kept.
    """
    if not enabled:
        yield
        return
    saved = (
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.use_deterministic_algorithms(True, warn_only=True)
    log.info("deterministic kernels: cuDNN deterministic, benchmark off, torch deterministic algorithms")
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[0], saved[1]
        torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])


class CheckpointStore:
    """The latest two training states of one trial, as files in `directory`, saved every `every` epochs.

    `on_save(epoch)` runs after each write (the flow copies the files to Metaflow's datastore there);
    `on_resume(epoch)` runs when a state left by an earlier attempt is resumed (the flow's live card says so).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        every: int = 1,
        on_save: Callable[[int], None] | None = None,
        on_resume: Callable[[int], None] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.path, self.previous_path = (self.directory / name for name in FILE_NAMES)
        self.every, self.on_save, self.on_resume = max(1, every), on_save, on_resume
        # Whether the latest file is worth keeping as the fall-back on the next save: not when it could not be
        # read (or is another trial's), or the only readable state would be pushed out by the next two saves.
        self._latest_usable = True

    def latest(self, identity: dict[str, Any] | None = None) -> TrainingState | None:
        """The newest readable state in the directory (put there by an earlier attempt) that is `identity`'s, or None.

        An unreadable latest file falls back to the previous one; a state whose identity differs from `identity`
        is refused (the trial then starts from epoch 1: it cannot contribute to this trial's result, and refusing
        by raising would fail every retry of the task the same way). Each skip is one log line naming why.
        """
        return self.resume(identity, lambda state: None, lambda: None)

    def resume(
        self,
        identity: dict[str, Any] | None,
        restore: Callable[[TrainingState], None],
        reset: Callable[[], None],
    ) -> TrainingState | None:
        """`latest`, restored by `restore` (into the model, optimiser, generators...): a state that parses but cannot
        be restored (a generator state of the wrong size, a tensor of the wrong shape) is skipped like an unreadable
        one, after `reset` has undone whatever `restore` changed, so the trial falls back instead of failing on
        every retry."""
        for path, state in self._readable(identity):
            try:
                restore(state)
            except Exception as err:
                log.warning("skipping checkpoint %s that cannot be restored: %s: %s", path, type(err).__name__, err)
                self._latest_usable &= path != self.path
                reset()
                continue
            log.info(
                "found a checkpoint after epoch %d in %s: resuming at epoch %d", state.epoch, path, state.epoch + 1
            )
            if self.on_resume is not None:
                self.on_resume(state.epoch + 1)
            return state
        return None

    def _readable(self, identity: dict[str, Any] | None) -> Iterator[tuple[Path, TrainingState]]:
        """(file, state) of each readable state that is `identity`'s, newest first; each skip logged."""
        for path in (self.path, self.previous_path):
            if not path.exists():
                continue
            try:
                state = TrainingState.from_bytes(path.read_bytes())
            except (OSError, ValueError) as err:
                log.warning("skipping unreadable checkpoint %s: %s", path, err)
                self._latest_usable &= path != self.path
                continue
            difference = identity_difference(identity, state.identity) if identity is not None else None
            if difference is not None:
                log.warning("refusing checkpoint %s of another trial: %s", path, difference)
                self._latest_usable &= path != self.path
                continue
            yield path, state

    def due(self, epoch: int, last_epoch: int) -> bool:
        """Whether to save after `epoch`: every `every` epochs, never after the last (the result is saved then)."""
        return epoch % self.every == 0 and epoch < last_epoch

    def save(self, state: TrainingState) -> None:
        """Write `state` as the latest file; the latest before it becomes the previous one.

        Written to a temporary file and renamed, so neither file is ever torn by a crash here.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        partial.write_bytes(state.to_bytes())
        if self.path.exists() and self._latest_usable:
            self.path.replace(self.previous_path)
        partial.replace(self.path)
        self._latest_usable = True
        if self.on_save is not None:
            self.on_save(state.epoch)
