"""Pen strokes on black, taught as no garment: drawn reproducibly in Fashion-MNIST's form and mixed into training at
their share."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fmnist.core.config import HParams
from fmnist.core.data import load_dataset, make_splits
from fmnist.training.loop import STROKE_IMAGES, _stroke_batches, train_model
from fmnist.training.strokes import stroke_images

CPU = torch.device("cpu")


def test_strokes_are_reproducible_and_an_image_does_not_depend_on_the_count():
    images = stroke_images(12, seed=3)
    assert images.shape == (12, 28, 28) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, stroke_images(12, seed=3))
    np.testing.assert_array_equal(images[:5], stroke_images(5, seed=3))
    assert not np.array_equal(images, stroke_images(12, seed=4))
    assert len({image.tobytes() for image in images}) == 12
    with pytest.raises(ValueError, match="non-negative"):
        stroke_images(-1, seed=0)


def test_strokes_are_light_lines_on_black_in_the_middle_of_the_frame():
    images = stroke_images(200, seed=0).astype(np.float64)  # (200, 28, 28)
    peaks = images.reshape(200, -1).max(1)  # (200,)
    assert (peaks >= 100).all()  # every image has a stroke
    lit = (images > 30).reshape(200, -1).mean(1)  # (200,): share of the frame the strokes cover
    assert 0.02 < np.median(lit) < 0.4 and lit.max() < 0.8  # lines, not filled shapes
    border = np.concatenate([images[:, :2].reshape(200, -1), images[:, -2:].reshape(200, -1)], axis=1)
    assert border.mean() < 0.1 * images[:, 8:20, 8:20].mean()  # centred, the frame's edge dark as in Fashion-MNIST


def test_the_stroke_sampler_teaches_no_class_at_its_share():
    hp = HParams(stroke_share=0.2)
    sampler = _stroke_batches(hp, seed=0, device=CPU, generator=torch.Generator().manual_seed(0))
    assert sampler is not None and len(sampler.right) == STROKE_IMAGES
    pixels, right = sampler.draw(200)
    assert pixels.shape == (50, 28, 28) and not right.any()  # a fifth of the batch, none with a right class
    assert _stroke_batches(HParams(), seed=0, device=CPU, generator=torch.Generator()) is None


def test_training_with_strokes_changes_the_weights_reproducibly():
    splits = make_splits(load_dataset(download=False), val_size=500, seed=0, train_subset=2500)
    hp = HParams(width=4, epochs=1, batch_size=128, stroke_share=0.1)
    mixed = train_model(hp, splits, CPU, seed=0)
    plain = train_model(hp.model_copy(update={"stroke_share": 0.0}), splits, CPU, seed=0)
    assert any(not torch.equal(mixed.state_dict[k], plain.state_dict[k]) for k in mixed.state_dict)
    again = train_model(hp, splits, CPU, seed=0)
    assert all(torch.equal(mixed.state_dict[k], again.state_dict[k]) for k in mixed.state_dict)
