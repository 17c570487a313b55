"""Real phone photographs in the training batches: prepared as the service sees them, scored by the likelihood of
the classes right for them, and mixed into training at their share."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fmnist.core.config import HParams
from fmnist.core.data import Splits, load_dataset, make_splits
from fmnist.core.real_photos import fit_parts, load_real_photos, sample_per_folder
from fmnist.images.normalise import prepare_upload
from fmnist.images.uploads import DEFAULT_MAX_PIXELS
from fmnist.training.loop import PhotoBatches, train_model
from fmnist.training.photo_batches import photo_training_set, set_likelihood_loss

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def photos():
    """Three photos of each folder of the fit split's training half."""
    return sample_per_folder(fit_parts(load_real_photos("fit"))[0], 3)


@pytest.fixture(scope="module")
def photo_set(photos):
    return photo_training_set(photos)


def test_the_photos_are_the_service_inputs_with_their_taught_classes(photos, photo_set):
    images, right = photo_set
    kept = [p for p in photos if not prepare_upload(p.data, DEFAULT_MAX_PIXELS).empty]
    assert images.shape == (len(kept), 28, 28) and images.dtype == np.uint8 and right.shape == (len(kept), 10)
    np.testing.assert_array_equal(images[0], prepare_upload(kept[0].data, DEFAULT_MAX_PIXELS).pixels)
    assert [tuple(np.flatnonzero(row)) for row in right] == [p.taught_classes for p in kept]
    # A T-shirt is taught as T-shirt/top alone (not as any top: that lets the network call it a shirt for free), a
    # longsleeve as any top, a hat as no class at all.
    by_folder = {p.folder: row for p, row in zip(kept, right, strict=True)}
    assert tuple(np.flatnonzero(by_folder["t-shirt"])) == (0,) and tuple(np.flatnonzero(by_folder["shirt"])) == (6,)
    assert tuple(np.flatnonzero(by_folder["longsleeve"])) == (0, 2, 4, 6) and not by_folder["hat"].any()


def test_the_set_loss_is_cross_entropy_for_one_class_and_minus_log_of_the_familys_probability():
    logits = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
    one = torch.zeros(4, 10, dtype=torch.bool)
    one[torch.arange(4), torch.tensor([0, 3, 5, 9])] = True
    expected = nn.functional.cross_entropy(logits, torch.tensor([0, 3, 5, 9]), reduction="none")
    torch.testing.assert_close(set_likelihood_loss(logits, one), expected)
    family = torch.zeros(4, 10, dtype=torch.bool)
    family[:, [5, 7, 9]] = True
    probability = logits.softmax(1)[:, [5, 7, 9]].sum(1)
    torch.testing.assert_close(set_likelihood_loss(logits, family), -probability.log())


def test_a_garment_without_a_class_is_taught_the_uniform_answer_with_finite_gradients():
    logits = torch.randn(3, 10, generator=torch.Generator().manual_seed(1), requires_grad=True)
    none = torch.zeros(3, 10, dtype=torch.bool)
    loss = set_likelihood_loss(logits, none)
    uniform = torch.full((3, 10), 0.1)
    expected = (uniform * (uniform.log() - logits.log_softmax(1))).sum(1)  # KL(uniform || p)
    torch.testing.assert_close(loss, expected)
    assert (loss > 0).all()
    assert set_likelihood_loss(torch.zeros(1, 10), none[:1]).abs().item() < 1e-6  # nothing to learn at uniform
    mixed = torch.cat([none[:1], torch.eye(10, dtype=torch.bool)[[3, 7]]])  # one without a class beside two with
    set_likelihood_loss(logits, mixed).sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_a_batch_holds_photos_at_their_share_shifted_and_flipped_as_scans_are(photo_set):
    images, right = photo_set
    hp = HParams(real_photo_share=0.2, crop_pad=1, flip=True)
    draw = PhotoBatches(torch.from_numpy(images), torch.from_numpy(right), hp, torch.Generator().manual_seed(0))
    pixels, drawn_right = draw.draw(200)
    assert pixels.shape == (50, 28, 28) and drawn_right.shape == (50, 10)  # 50 of 250: a fifth
    assert drawn_right.any(1).all()  # garments without a class are left out...
    taught = HParams(real_photo_share=0.2, real_photo_no_class=True)
    with_none = PhotoBatches(
        torch.from_numpy(images), torch.from_numpy(right), taught, torch.Generator().manual_seed(0)
    )
    assert len(with_none.right) == len(right) > len(draw.right)  # ...unless the trial teaches them


def test_training_with_photos_uses_them_and_without_any_prepared_is_refused(photo_set):
    splits = make_splits(load_dataset(download=False), val_size=500, seed=0, train_subset=2500)
    with_photos = Splits(splits.train_images, splits.train_labels, splits.val_images, splits.val_labels, *photo_set)
    hp = HParams(width=4, epochs=1, batch_size=128, real_photo_share=0.1)
    mixed = train_model(hp, with_photos, CPU, seed=0)
    plain = train_model(hp.model_copy(update={"real_photo_share": 0.0}), with_photos, CPU, seed=0)
    assert any(not torch.equal(mixed.state_dict[k], plain.state_dict[k]) for k in mixed.state_dict)
    again = train_model(hp, with_photos, CPU, seed=0)
    assert all(torch.equal(mixed.state_dict[k], again.state_dict[k]) for k in mixed.state_dict)  # reproducible
    with pytest.raises(ValueError, match="no real photographs were prepared"):
        train_model(hp, splits, CPU, seed=0)
