"""The trainer learns on real images, augments correctly on the device, and is reproducible."""

from __future__ import annotations

import pytest
import torch

from fmnist.core.config import HParams
from fmnist.core.data import PIXEL_MEAN, PIXEL_STD, load_dataset, make_splits
from fmnist.core.model import ModelArgs, build_model, normalize
from fmnist.training.loop import (
    BatchAugmenter,
    PhotometricAugmenter,
    one_cycle,
    refit_batch_norm,
    train_model,
    validate,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def small_splits():
    return make_splits(load_dataset(download=False), val_size=1000, seed=0, train_subset=5000)


def test_short_training_lowers_loss_and_beats_chance(small_splits):
    hp = HParams(width=8, epochs=3, batch_size=128, lr=0.05)
    result = train_model(hp, small_splits, CPU, seed=0)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0]
    assert result.val_accuracy > 0.6  # chance is 0.1
    assert all(t.device.type == "cpu" for t in result.state_dict.values())
    assert {"epoch", "val_accuracy", "images_per_second", "elapsed_seconds"} <= set(result.history[0])


def test_same_seed_same_result(small_splits):
    hp = HParams(width=4, epochs=1, batch_size=256)
    first, second = (train_model(hp, small_splits, CPU, seed=3) for _ in range(2))
    assert abs(first.val_accuracy - second.val_accuracy) <= 0.001
    assert all(torch.equal(first.state_dict[k], second.state_dict[k]) for k in first.state_dict)


def test_augmenter_without_shift_or_flip_is_identity():
    images = torch.randint(0, 256, (6, 28, 28), dtype=torch.uint8)
    aug = BatchAugmenter(images, pad=0, flip=False, generator=torch.Generator().manual_seed(0))
    idx = torch.tensor([4, 0, 2])
    assert torch.equal(aug(idx), images[idx])


def test_augmenter_outputs_are_shifted_or_mirrored_copies():
    images = torch.randint(1, 256, (64, 28, 28), dtype=torch.uint8)
    aug = BatchAugmenter(images, pad=2, flip=True, generator=torch.Generator().manual_seed(0))
    out = aug(torch.arange(64))
    assert out.shape == (64, 28, 28) and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    flips = 0
    for i in range(64):
        crops = {
            (dy, dx, f): torch.equal(
                out[i], (padded[i, dy : dy + 28, dx : dx + 28].flip(-1) if f else padded[i, dy : dy + 28, dx : dx + 28])
            )
            for dy in range(5)
            for dx in range(5)
            for f in (0, 1)
        }
        matches = [k for k, ok in crops.items() if ok]
        assert matches, f"image {i} is not a shifted/flipped copy"
        flips += matches[0][2]
    assert 10 < flips < 54  # about half are mirrored


DEVICES = [CPU] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_photometric_augmenter_shapes_ranges_and_device(small_splits, device):
    images = torch.from_numpy(small_splits.train_images[:256]).to(device)  # (256, 28, 28) uint8
    hp = HParams(photo_prob=1.0, rotate_prob=1.0)
    out = PhotometricAugmenter(hp, torch.Generator(device=device).manual_seed(0))(images)
    assert out.shape == images.shape and out.dtype == torch.float32 and out.device.type == device.type
    assert out.min() >= 0.0 and out.max() <= 255.0
    # Every image changed, and the backgrounds are no longer all black: what the augmentation is for.
    assert ((out - images.float()).abs().flatten(1).amax(1) > 1).all()
    corners = out[:, :2, :2].flatten(1).mean(1)
    assert (corners > 5).float().mean() > 0.2


def test_photometric_augmenter_is_deterministic_and_leaves_unchosen_images_alone(small_splits):
    images = torch.from_numpy(small_splits.train_images[:512])
    hp = HParams(photo_prob=0.3, rotate_prob=0.0)

    def run(seed: int) -> torch.Tensor:
        return PhotometricAugmenter(hp, torch.Generator().manual_seed(seed))(images)

    assert torch.equal(run(0), run(0)) and not torch.equal(run(0), run(1))
    unchanged = (run(0) == images.float()).flatten(1).all(1)  # (512,)
    assert unchanged.sum().item() == 512 - round(0.3 * 512)  # exactly photo_prob of the batch is changed
    assert not torch.equal(unchanged, (run(1) == images.float()).flatten(1).all(1))  # a different subset per draw
    off = PhotometricAugmenter(HParams(photo_prob=0.0, rotate_prob=0.0), torch.Generator())
    assert not off.active


def test_photometric_augmenter_passes_batches_too_small_to_change_through(small_splits):
    images = torch.from_numpy(small_splits.train_images[:2])
    augment = PhotometricAugmenter(HParams(photo_prob=0.2, rotate_prob=0.2), torch.Generator().manual_seed(0))
    assert torch.equal(augment(images), images.float())  # round(0.2 * 2) = 0 images to change
    assert augment(images[:0]).shape == (0, 28, 28)


def test_one_cycle_warms_up_then_decays_to_zero():
    f = one_cycle(100, 0.2)
    assert f(0) == pytest.approx(0.1) and f(20) == pytest.approx(1.0) and f(100) == 0.0
    assert all(f(s) >= f(s + 1) for s in range(20, 100))


def test_the_gpu_profile_path_runs_on_a_cpu(small_splits):
    """What of the `gpu` profile a CPU can run: its residual depth, weight averaging and bf16 autocast (slow on a
    CPU without bf16 units, hence a small subset; the averaging decay is shortened to fit 2 short epochs)."""
    from fmnist.core.config import CONFIG_DIR, load_profile
    from fmnist.core.data import Splits

    gpu = load_profile(CONFIG_DIR / "gpu.yaml").hparams
    hp = gpu.model_copy(update={"width": 4, "epochs": 2, "batch_size": 64, "lr": 0.05, "ema_decay": 0.9})
    assert gpu.depth >= 1 and gpu.ema_decay > 0
    subset = Splits(
        small_splits.train_images[:1500],
        small_splits.train_labels[:1500],
        small_splits.val_images[:300],
        small_splits.val_labels[:300],
    )
    result = train_model(hp, subset, CPU, seed=0, amp=torch.bfloat16)
    assert result.val_accuracy > 0.3  # learns (chance is 0.1) under bf16 autocast, through the weight average
    assert any(k.startswith("features.1.body") for k in result.state_dict)  # a residual block was trained
    assert all(v.dtype != torch.bfloat16 for v in result.state_dict.values())  # weights stay fp32


def test_batch_norm_refit_averages_the_given_scans_and_leaves_the_weights_alone(small_splits):
    model = build_model(ModelArgs(width=4))
    model.train()
    model(torch.randn(64, 1, 28, 28) * 3 + 2)  # running statistics of something else entirely
    model.eval()
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    scans = torch.from_numpy(small_splits.train_images[:600])  # (600, 28, 28) uint8
    refit_batch_norm(model, scans, 200, CPU, None)
    assert not model.training  # back in the mode it was in
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    # The first batch norm's mean is the plain mean of its convolution's output over the scans, whatever the batching.
    conv, norm = model.features[0][0], model.features[0][1]
    with torch.no_grad():
        expected = conv(normalize(scans, PIXEL_MEAN, PIXEL_STD)).mean(dim=(0, 2, 3))  # (4,)
    torch.testing.assert_close(norm.running_mean, expected, rtol=1e-4, atol=1e-5)
    again = build_model(ModelArgs(width=4))
    again.load_state_dict(model.state_dict())
    refit_batch_norm(again, scans, 600, CPU, None)
    torch.testing.assert_close(again.features[0][1].running_mean, norm.running_mean)


def test_training_with_a_batch_norm_refit_reports_the_refitted_model(small_splits):
    hp = HParams(width=4, epochs=1, batch_size=256, bn_refit_scans=True)
    result = train_model(hp, small_splits, CPU, seed=3)
    plain = train_model(hp.model_copy(update={"bn_refit_scans": False}), small_splits, CPU, seed=3)
    changed = [k for k in plain.state_dict if not torch.equal(plain.state_dict[k], result.state_dict[k])]
    assert changed and all("running" in k or "num_batches" in k for k in changed)  # only the statistics differ
    model = build_model(result.model_args)
    model.load_state_dict(result.state_dict)
    _, accuracy = validate(model, small_splits, CPU, None)
    assert result.val_accuracy == pytest.approx(accuracy)
