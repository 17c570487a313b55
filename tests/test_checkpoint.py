"""Training checkpoints: a trial interrupted after epoch k and resumed ends with exactly the uninterrupted weights."""

from __future__ import annotations

import pytest
import torch

from fmnist.checkpoint import CheckpointStore, TrainingState
from fmnist.config import HParams
from fmnist.data import load_dataset, make_splits
from fmnist.train import train_model

CPU = torch.device("cpu")


class Interrupted(Exception):
    """Stands in for a process that dies after an epoch."""


@pytest.fixture(scope="module")
def small_splits():
    return make_splits(load_dataset(download=False), val_size=500, seed=0, train_subset=2500)


def interrupt_after(epoch: int):
    def callback(stats):
        if stats["epoch"] == epoch:
            raise Interrupted

    return callback


def test_resuming_after_epoch_2_of_4_gives_bit_identical_weights(small_splits, tmp_path):
    # Every source of randomness in play: shifts, flips, photometric changes, rotations, dropout, weight averaging.
    hp = HParams(width=4, epochs=4, batch_size=128, dropout=0.2, ema_decay=0.9, photo_prob=0.5, rotate_prob=0.3)
    uninterrupted = train_model(hp, small_splits, CPU, seed=5)

    resumed_epochs = []
    with pytest.raises(Interrupted):
        train_model(hp, small_splits, CPU, seed=5, on_epoch=interrupt_after(2), checkpoints=CheckpointStore(tmp_path))
    store = CheckpointStore(tmp_path, on_resume=resumed_epochs.append)
    resumed = train_model(hp, small_splits, CPU, seed=5, checkpoints=store)

    assert resumed.resumed_at == 3 and resumed_epochs == [3]
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    for name, tensor in uninterrupted.state_dict.items():
        assert torch.equal(tensor, resumed.state_dict[name]), name
    assert resumed.history[-1]["val_accuracy"] == uninterrupted.history[-1]["val_accuracy"]


def test_saves_follow_the_interval_and_skip_the_last_epoch(tmp_path):
    saved = []
    store = CheckpointStore(tmp_path, every=2, on_save=saved.append)
    assert [e for e in range(1, 8) if store.due(e, last_epoch=6)] == [2, 4]
    state = TrainingState(1, {}, {}, {}, torch.zeros(4, dtype=torch.uint8), torch.get_rng_state())
    store.save(state)
    assert saved == [1] and store.latest().epoch == 1
    assert CheckpointStore(tmp_path / "empty").latest() is None


def test_a_foreign_file_is_not_a_checkpoint(tmp_path):
    (tmp_path / "training_state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a FashionFlow training checkpoint"):
        CheckpointStore(tmp_path).latest()
