"""Device-resident training: the whole training set lives on the device as uint8, augmented a batch at a time there.

No DataLoader and no per-sample Python: each step gathers a batch of randomly shifted and flipped images with
one indexing operation, then changes brightness, contrast, gamma, blur and noise with per-image parameters drawn
as tensors, which is what keeps a 2-core CPU and a large GPU both busy with the model itself.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

from fmnist.core.config import HParams
from fmnist.core.data import NUM_CLASSES, PIXEL_MEAN, PIXEL_STD, Splits
from fmnist.core.inference import predict_logits
from fmnist.core.model import ModelArgs, build_model, count_parameters, normalize
from fmnist.core.runtime import autocast, seed_everything
from fmnist.training.checkpoint import CheckpointStore, TrainingState, capture_rng, restore_rng, trial_identity
from fmnist.training.photo_batches import set_likelihood_loss
from fmnist.training.strokes import stroke_images

log = logging.getLogger(__name__)

EpochCallback = Callable[[dict[str, float]], None]
# Pen-stroke images a trial with `stroke_share` draws from: a 16-epoch default run at a share of 0.05 draws each
# about eleven times, too few to learn any one by heart.
STROKE_IMAGES = 4096


def model_args(hp: HParams) -> ModelArgs:
    """The network shape a trial's hyper-parameters ask for."""
    return ModelArgs(width=hp.width, depth=hp.depth, dropout=hp.dropout, flip_tta=hp.flip_tta)


@dataclass
class TrainResult:
    """What one training run produces; weights are CPU tensors so they can be stored and served anywhere."""

    state_dict: dict[str, torch.Tensor]
    model_args: ModelArgs
    history: list[dict[str, float]] = field(default_factory=list)
    val_accuracy: float = 0.0
    val_loss: float = 0.0
    train_seconds: float = 0.0  # optimisation only: per-epoch validation is excluded
    images_per_second: float = 0.0
    parameters: int = 0
    resumed_at: int | None = None  # the first epoch trained after resuming from a checkpoint, if one was found


class BatchAugmenter:
    """Random shifts (pad-and-crop) and horizontal flips for whole batches, by one gather on the device."""

    def __init__(self, images: torch.Tensor, pad: int, flip: bool, generator: torch.Generator) -> None:
        # images: (N, 28, 28) uint8 on the training device; padded once here, not per batch.
        self.pad, self.flip, self.generator = pad, flip, generator
        self.padded = nn.functional.pad(images, (pad, pad, pad, pad)) if pad else images  # (N, 28+2p, 28+2p)
        self.size = images.shape[-1]
        self.offsets = torch.arange(self.size, device=images.device)  # (28,)

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        """(B,) indices -> (B, 28, 28) uint8 augmented images."""
        b, dev = idx.shape[0], idx.device
        if self.pad:
            dy, dx = torch.randint(0, 2 * self.pad + 1, (2, b, 1), device=dev, generator=self.generator)
        else:
            dy = dx = torch.zeros(b, 1, dtype=torch.long, device=dev)
        rows = dy + self.offsets  # (B, 28)
        cols = dx + self.offsets  # (B, 28)
        if self.flip:
            flipped = torch.rand(b, 1, device=dev, generator=self.generator) < 0.5  # (B, 1)
            cols = torch.where(flipped, cols.flip(1), cols)
        return self.padded[idx[:, None, None], rows[:, :, None], cols[:, None, :]]


class PhotometricAugmenter:
    """Small rotations, then brightness, contrast, gamma, blur and noise, for whole batches, drawn per image on the
    device.

    Each change is applied to a random subset of round(prob * B) images of the batch (drawn without replacement, so
    every image has the same chance, within half an image's share of `prob`), and only those images are computed:
    the others pass through untouched at no cost. Per-image parameters are (K, 1, 1) tensors, so a subset costs a
    handful of element-wise operations and one 3x3 convolution, whatever its size: no per-sample Python, and no
    device-to-host sync.
    """

    def __init__(self, hp: HParams, generator: torch.Generator) -> None:
        self.hp, self.generator = hp, generator
        kernel = torch.tensor([1.0, 2.0, 1.0])
        self.kernel = (kernel[:, None] * kernel[None, :] / 16.0).reshape(1, 1, 3, 3)  # (1, 1, 3, 3) Gaussian

    @property
    def active(self) -> bool:
        """Whether any image can be changed at all."""
        return self.hp.photo_prob > 0 or (self.hp.rotate_prob > 0 and self.hp.rotate > 0)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 28, 28) uint8 -> (B, 28, 28) float32 pixels on the same 0-255 scale."""
        hp = self.hp
        x = images.float().div_(255.0)  # (B, 28, 28) in [0, 1]
        if hp.rotate_prob > 0 and hp.rotate > 0:
            turned = self.choose(x.shape[0], hp.rotate_prob)  # (K,)
            if turned.numel():  # a shape, known on the host: no sync
                x[turned] = self.rotate(x[turned])
        changed = self.choose(x.shape[0], hp.photo_prob)  # (K,)
        if changed.numel():
            x[changed] = self.photo(x[changed])
        return x.mul_(255.0)

    def choose(self, b: int, prob: float) -> torch.Tensor:
        """(K,) indices of round(prob * b) distinct images of a batch of b, drawn on the generator's device."""
        order = torch.randperm(b, device=self.generator.device, generator=self.generator)  # (b,)
        return order[: round(prob * b)]

    def uniform(self, k: int, low: float, high: float) -> torch.Tensor:
        """(K, 1, 1) per-image parameters drawn uniformly from [low, high)."""
        return low + (high - low) * torch.rand(k, 1, 1, device=self.generator.device, generator=self.generator)

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """(K, 28, 28) in [0, 1] -> the same turned by up to `rotate` degrees either way; black fills the corners."""
        k = x.shape[0]
        angle = torch.deg2rad(self.uniform(k, -self.hp.rotate, self.hp.rotate)).view(k)  # (K,)
        cos, sin, zero = torch.cos(angle), torch.sin(angle), torch.zeros_like(angle)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)  # (K, 2, 3)
        grid = nn.functional.affine_grid(theta, [k, 1, *x.shape[1:]], align_corners=False)
        return nn.functional.grid_sample(x[:, None], grid, align_corners=False)[:, 0]

    def photo(self, x: torch.Tensor) -> torch.Tensor:
        """(K, 28, 28) in [0, 1] -> gamma, contrast, brightness, blur and noise applied, clamped to [0, 1]."""
        hp, k = self.hp, x.shape[0]
        out = x.pow(torch.exp(self.uniform(k, -hp.photo_gamma, hp.photo_gamma)))
        mean = out.mean(dim=(1, 2), keepdim=True)  # (K, 1, 1)
        out = mean + self.uniform(k, 1.0 - hp.photo_contrast, 1.0) * (out - mean)
        out = out + self.uniform(k, -hp.photo_brightness / 2, hp.photo_brightness)
        blurred = nn.functional.conv2d(out[:, None], self.kernel.to(x.device), padding=1)[:, 0]  # (K, 28, 28)
        out = out + self.uniform(k, 0.0, hp.photo_blur) * (blurred - out)
        noise = torch.randn(out.shape, device=x.device, generator=self.generator)  # (K, 28, 28)
        out = out + self.uniform(k, 0.0, hp.photo_noise) * noise
        return out.clamp_(0.0, 1.0)


def one_cycle(total_steps: int, warmup_fraction: float) -> Callable[[int], float]:
    """Learning-rate multiplier: linear warm-up from 10% to 100%, then linear decay to zero."""
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return 0.1 + 0.9 * step / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


def make_optimizer(model: nn.Module, hp: HParams) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW; weight decay only on conv and linear weights, not on norms and biases."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups: list[dict[str, Any]] = [
        {"params": decay, "weight_decay": hp.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if hp.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=hp.lr)
    return torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, nesterov=hp.momentum > 0)


def train_model(
    hp: HParams,
    splits: Splits,
    device: torch.device,
    seed: int,
    amp: torch.dtype | None = None,
    on_epoch: EpochCallback | None = None,
    checkpoints: CheckpointStore | None = None,
) -> TrainResult:
    """Train one FashionCNN on `splits` with hyper-parameters `hp`; validate after every epoch.

    With `checkpoints`, the training state is saved every `checkpoints.every` epochs, and a state already in the
    store (left by an interrupted attempt of the same trial: same hyper-parameters, seed, data and code) is resumed
    from. The optimiser, schedule, weight average and every random generator continue, so on a CPU the result is the
    same, bit for bit, as without the interruption; on a GPU it is too only under deterministic kernels (see
    `fmnist.training.checkpoint` for what differs without them).
    """
    seed_everything(seed)
    generator = torch.Generator(device=device).manual_seed(seed)
    args = model_args(hp)
    model = build_model(args).to(device).to(memory_format=torch.channels_last)
    ema = (
        AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(hp.ema_decay), use_buffers=True)
        if hp.ema_decay
        else None
    )

    train_x = torch.from_numpy(np.ascontiguousarray(splits.train_images)).to(device)  # (N, 28, 28) uint8
    train_y = torch.from_numpy(splits.train_labels.astype(np.int64)).to(device)  # (N,)
    augment = BatchAugmenter(train_x, hp.crop_pad, hp.flip, generator)
    photometric = PhotometricAugmenter(hp, generator)
    # Images trained on beside the scans, each batch's share of them: real photos, pen strokes.
    extras = [
        m
        for m in (_photo_batches(hp, splits, device, generator), _stroke_batches(hp, seed, device, generator))
        if m is not None
    ]
    n = len(train_y)
    # Drop a last batch that would be too small for batch norm statistics.
    steps_per_epoch = max(1, n // hp.batch_size if n % hp.batch_size < 2 else math.ceil(n / hp.batch_size))
    optimizer = make_optimizer(model, hp)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, one_cycle(hp.epochs * steps_per_epoch, hp.warmup_fraction))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=hp.label_smoothing)

    result = TrainResult(state_dict={}, model_args=args, parameters=count_parameters(model))
    log.info("training %s (%d parameters) on %d images, %d steps/epoch", args, result.parameters, n, steps_per_epoch)
    first_epoch = 1
    # Every explicit generator the loop draws from, by name; torch's, NumPy's and Python's global ones come too.
    generators = {"augment": generator}
    identity = trial_identity(hp, seed, splits, device, amp) if checkpoints is not None else {}
    resumed = None
    if checkpoints is not None:
        # The untouched start, to go back to when a state fails half-way through being restored.
        start = TrainingState(
            0,
            copy.deepcopy(model.state_dict()),
            copy.deepcopy(optimizer.state_dict()),
            copy.deepcopy(schedule.state_dict()),
            capture_rng(device, generators),
            ema=copy.deepcopy(ema.state_dict()) if ema is not None else None,
        )

        def restore(state: TrainingState) -> None:
            model.load_state_dict(state.model)
            optimizer.load_state_dict(state.optimizer)
            schedule.load_state_dict(state.schedule)
            restore_rng(state.rng, device, generators)
            if ema is not None and state.ema is not None:
                ema.load_state_dict(state.ema)

        resumed = checkpoints.resume(identity, restore, lambda: restore(start))
    if resumed is not None:
        result.history, result.train_seconds = list(resumed.history), resumed.train_seconds
        first_epoch = resumed.epoch + 1
        result.resumed_at = first_epoch
        log.info("resumed at epoch %d of %d from a checkpoint", first_epoch, hp.epochs)
    started = time.perf_counter() - result.train_seconds
    for epoch in range(first_epoch, hp.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        order = torch.randperm(n, device=device, generator=generator)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        for step in range(steps_per_epoch):
            idx = order[step * hp.batch_size : (step + 1) * hp.batch_size]  # (B,)
            pixels = augment(idx)  # (B, 28, 28) uint8
            if extras:
                drawn = [m.draw(len(idx)) for m in extras]  # each (P_i, 28, 28) uint8, (P_i, 10) bool
                pixels = torch.cat([pixels, *(d[0] for d in drawn)])  # (B + P, 28, 28)
                extra_right = torch.cat([d[1] for d in drawn])  # (P, 10)
            if photometric.active:
                pixels = photometric(pixels)  # (B + P, 28, 28) float, 0-255
            x = normalize(pixels, PIXEL_MEAN, PIXEL_STD).contiguous(memory_format=torch.channels_last)
            y = train_y[idx]
            with autocast(device, amp):
                all_logits = model(x)  # (B + P, 10)
                logits = all_logits[: len(idx)]  # (B, 10): the scans'
                loss = loss_fn(logits.float(), y)
                if extras:
                    # Every image weighs the same: the extras' mean loss in proportion to their share of the batch.
                    extra_loss = set_likelihood_loss(all_logits[len(idx) :].float(), extra_right).mean()
                    loss = (loss * len(idx) + extra_loss * len(extra_right)) / (len(idx) + len(extra_right))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if ema is not None:
                ema.update_parameters(model)
            # Accumulate on the device: a .item() per step would stall a GPU on every batch.
            loss_sum += loss.detach() * len(idx)
            correct += (logits.argmax(1) == y).sum()
            seen += len(idx)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        epoch_seconds = time.perf_counter() - t0
        result.train_seconds += epoch_seconds

        val_loss, val_acc = validate(ema.module if ema is not None else model, splits, device, amp)
        stats = {
            "epoch": epoch,
            "train_loss": loss_sum.item() / seen,
            "train_accuracy": correct.item() / seen,
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "lr": float(schedule.get_last_lr()[0]),
            "images_per_second": seen / epoch_seconds,
            "epoch_seconds": epoch_seconds,
            "elapsed_seconds": time.perf_counter() - started,
        }
        result.history.append(stats)
        log.info(
            "epoch %d/%d  loss %.4f  train acc %.4f  val acc %.4f  %.0f img/s  %.1fs elapsed",
            epoch,
            hp.epochs,
            stats["train_loss"],
            stats["train_accuracy"],
            val_acc,
            stats["images_per_second"],
            stats["elapsed_seconds"],
        )
        if checkpoints is not None and checkpoints.due(epoch, hp.epochs):
            rng = capture_rng(device, generators)
            checkpoints.save(training_state(epoch, model, optimizer, schedule, ema, result, rng, identity))
        if on_epoch is not None:
            on_epoch(stats)

    final = ema.module if ema is not None else model
    if hp.bn_refit_scans:
        refit_batch_norm(final, train_x, hp.batch_size, device, amp)
        result.history[-1]["val_loss"], result.history[-1]["val_accuracy"] = validate(final, splits, device, amp)
    result.state_dict = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in final.state_dict().items()}
    result.val_loss, result.val_accuracy = result.history[-1]["val_loss"], result.history[-1]["val_accuracy"]
    result.images_per_second = sum(h["images_per_second"] for h in result.history) / len(result.history)
    return result


class MixedBatches:
    """Draws images that join each batch beside its scans: `share` of the scans and them together, with replacement,
    shifted and flipped as the scans are, each with the classes it is taught (none: towards the uniform answer)."""

    def __init__(
        self, images: torch.Tensor, right: torch.Tensor, share: float, hp: HParams, generator: torch.Generator
    ) -> None:
        # images: (M, 28, 28) uint8, right: (M, 10) bool, both on the training device.
        self.right, self.share, self.generator = right, share, generator
        self.augment = BatchAugmenter(images, hp.crop_pad, hp.flip, generator)

    def draw(self, scans: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The images beside `scans` scans, so that they are `share` of scans and them: (P, 28, 28) uint8, (P, 10)."""
        count = max(1, round(scans * self.share / (1 - self.share)))
        idx = torch.randint(0, len(self.right), (count,), device=self.right.device, generator=self.generator)
        return self.augment(idx), self.right[idx]


class PhotoBatches(MixedBatches):
    """The real photographs of a batch, `real_photo_share` of it; garments without a class only with
    `real_photo_no_class`."""

    def __init__(self, images: torch.Tensor, right: torch.Tensor, hp: HParams, generator: torch.Generator) -> None:
        if not hp.real_photo_no_class:  # garments without a class (no right class) are not trained on
            taught = right.any(1)  # (M,)
            images, right = images[taught], right[taught]
        super().__init__(images, right, hp.real_photo_share, hp, generator)


def _photo_batches(
    hp: HParams, splits: Splits, device: torch.device, generator: torch.Generator
) -> PhotoBatches | None:
    """The real photographs' sampler, when the trial trains on them (`real_photo_share` > 0 and photos given)."""
    if hp.real_photo_share == 0:
        return None
    if splits.photo_images is None or splits.photo_right is None or len(splits.photo_images) == 0:
        raise ValueError("real_photo_share > 0 but no real photographs were prepared for training (Splits.photo_*)")
    images = torch.from_numpy(np.ascontiguousarray(splits.photo_images)).to(device)
    right = torch.from_numpy(np.ascontiguousarray(splits.photo_right)).to(device)
    return PhotoBatches(images, right, hp, generator)


def _stroke_batches(hp: HParams, seed: int, device: torch.device, generator: torch.Generator) -> MixedBatches | None:
    """The pen strokes' sampler, when the trial trains on them (`stroke_share` > 0): `STROKE_IMAGES` drawn from the
    trial's seed, none with a right class."""
    if hp.stroke_share == 0:
        return None
    images = torch.from_numpy(stroke_images(STROKE_IMAGES, seed)).to(device)  # (S, 28, 28) uint8
    right = torch.zeros(len(images), NUM_CLASSES, dtype=torch.bool, device=device)  # (S, 10): no garment
    log.info(
        "%d pen-stroke images, %.0f%% of each batch, taught towards the uniform answer",
        len(images),
        100 * hp.stroke_share,
    )
    return MixedBatches(images, right, hp.stroke_share, hp, generator)


def training_state(
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    ema: AveragedModel | None,
    result: TrainResult,
    rng: dict[str, Any],
    identity: dict[str, Any],
) -> TrainingState:
    """Everything `train_model` needs to continue after `epoch`, copied to the CPU, and whose trial it is."""

    def cpu(tree: Any) -> Any:
        if isinstance(tree, torch.Tensor):
            return tree.detach().to("cpu", copy=True)
        if isinstance(tree, dict):
            return {k: cpu(v) for k, v in tree.items()}
        if isinstance(tree, list | tuple):
            return type(tree)(cpu(v) for v in tree)
        return tree

    return TrainingState(
        epoch=epoch,
        model=cpu(model.state_dict()),
        optimizer=cpu(optimizer.state_dict()),
        schedule=cpu(schedule.state_dict()),
        rng=rng,
        identity=identity,
        ema=cpu(ema.state_dict()) if ema is not None else None,
        history=list(result.history),
        train_seconds=result.train_seconds,
    )


def refit_batch_norm(
    model: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device, amp: torch.dtype | None
) -> None:
    """Every batch norm's running statistics recomputed as the plain average over `images` (N, 28, 28) uint8, unshifted
    and unchanged, in batches of `batch_size`; the weights stay as they are."""

    def batches() -> Iterator[torch.Tensor]:
        for start in range(0, len(images), batch_size):
            pixels = images[start : start + batch_size]  # (b, 28, 28) uint8
            yield normalize(pixels, PIXEL_MEAN, PIXEL_STD).contiguous(memory_format=torch.channels_last)

    with autocast(device, amp):
        update_bn(batches(), model)
    log.info("batch-norm statistics recomputed on %d clean training scans", len(images))


def validate(model: nn.Module, splits: Splits, device: torch.device, amp: torch.dtype | None) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on the validation split."""
    logits = predict_logits(model, splits.val_images, device, amp=amp)  # (N_val, 10) on CPU
    labels = torch.from_numpy(splits.val_labels.astype(np.int64))
    loss = nn.functional.cross_entropy(logits, labels).item()
    return loss, (logits.argmax(1) == labels).float().mean().item()
