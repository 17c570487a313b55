"""Training checkpoints: a trial interrupted after epoch k and resumed ends with exactly the uninterrupted weights;
another trial's state is refused, and an unreadable latest state falls back to the previous one."""

from __future__ import annotations

import io
import logging
import random
import shutil
import struct
import zipfile

import numpy as np
import pytest
import torch

from fmnist.core.config import HParams
from fmnist.core.data import Splits, load_dataset, make_splits
from fmnist.training.checkpoint import (
    FILE_NAME,
    PREVIOUS_FILE_NAME,
    RNG_KEYS,
    CheckpointStore,
    TrainingState,
    capture_rng,
    deterministic_kernels,
    restore_rng,
    trial_identity,
)
from fmnist.training.loop import train_model

CPU = torch.device("cpu")
SEED = 5
# Every source of randomness in play: shifts, flips, photometric changes, rotations, dropout, weight averaging.
HP = HParams(width=4, epochs=3, batch_size=128, dropout=0.2, ema_decay=0.9, photo_prob=0.5, rotate_prob=0.3)


class Interrupted(Exception):
    """Stands in for a process that dies after an epoch."""


@pytest.fixture(scope="module")
def small_splits():
    return make_splits(load_dataset(download=False), val_size=500, seed=0, train_subset=2500)


@pytest.fixture(scope="module")
def uninterrupted(small_splits):
    return train_model(HP, small_splits, CPU, seed=SEED)


@pytest.fixture(scope="module")
def interrupted_dir(small_splits, tmp_path_factory):
    """The checkpoints a trial leaves when it dies after epoch 2 of 3: epoch 2 (latest) and epoch 1 (previous)."""
    directory = tmp_path_factory.mktemp("interrupted")
    with pytest.raises(Interrupted):
        train_model(
            HP, small_splits, CPU, seed=SEED, on_epoch=interrupt_after(2), checkpoints=CheckpointStore(directory)
        )
    return directory


@pytest.fixture
def checkpoints(interrupted_dir, tmp_path):
    """A copy of the interrupted trial's checkpoints that a test may change."""
    return shutil.copytree(interrupted_dir, tmp_path / "checkpoints")


def interrupt_after(epoch: int):
    def callback(stats):
        if stats["epoch"] == epoch:
            raise Interrupted

    return callback


def assert_same_weights(expected, actual):
    for name, tensor in expected.state_dict.items():
        assert torch.equal(tensor, actual.state_dict[name]), name
    assert actual.history[-1]["val_accuracy"] == expected.history[-1]["val_accuracy"]


def test_resuming_after_epoch_2_of_3_gives_bit_identical_weights(small_splits, uninterrupted, checkpoints):
    resumed_epochs = []
    store = CheckpointStore(checkpoints, on_resume=resumed_epochs.append)
    resumed = train_model(HP, small_splits, CPU, seed=SEED, checkpoints=store)

    assert resumed.resumed_at == 3 and resumed_epochs == [3]
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert_same_weights(uninterrupted, resumed)


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(small_splits, uninterrupted, checkpoints, caplog):
    latest = checkpoints / FILE_NAME
    latest.write_bytes(latest.read_bytes()[:1000])  # truncated, as by a torn upload
    store = CheckpointStore(checkpoints)
    with caplog.at_level(logging.INFO, logger="fmnist.training.checkpoint"):
        resumed = train_model(HP, small_splits, CPU, seed=SEED, checkpoints=store)

    skipped = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(skipped) == 1 and FILE_NAME in skipped[0] and "not a FashionFlow training checkpoint" in skipped[0]
    assert resumed.resumed_at == 2  # from epoch 1's state: one epoch lost, not the trial
    assert_same_weights(uninterrupted, resumed)
    # The save after epoch 2 replaced the unreadable file instead of keeping it as the fall-back.
    epochs = [TrainingState.from_bytes((checkpoints / n).read_bytes()).epoch for n in (FILE_NAME, PREVIOUS_FILE_NAME)]
    assert epochs == [2, 1]


def flip_a_byte_inside_a_tensor(path) -> None:
    """Flip one bit in the middle of the checkpoint's largest tensor's bytes, as storage rot would: the file still
    parses, and torch.load alone would load the changed value."""
    blob = bytearray(path.read_bytes())
    member = max(zipfile.ZipFile(io.BytesIO(bytes(blob))).infolist(), key=lambda m: m.file_size)
    name_length, extra_length = struct.unpack("<HH", blob[member.header_offset + 26 : member.header_offset + 30])
    start = member.header_offset + 30 + name_length + extra_length
    blob[start + member.file_size // 2] ^= 0x10
    path.write_bytes(bytes(blob))
    assert torch.load(io.BytesIO(bytes(blob)), weights_only=True)["epoch"] == 2  # loads, silently changed


def test_a_flipped_byte_in_the_latest_checkpoint_is_caught_and_falls_back(
    small_splits, uninterrupted, checkpoints, caplog
):
    flip_a_byte_inside_a_tensor(checkpoints / FILE_NAME)
    with caplog.at_level(logging.WARNING, logger="fmnist.training.checkpoint"):
        resumed = train_model(HP, small_splits, CPU, seed=SEED, checkpoints=CheckpointStore(checkpoints))
    assert any("fails its CRC check" in r.getMessage() for r in caplog.records)
    assert resumed.resumed_at == 2
    assert_same_weights(uninterrupted, resumed)


def unrestorable(path) -> None:
    """Rewrite the state at `path` so that it parses but its torch generator state cannot be set."""
    state = TrainingState.from_bytes(path.read_bytes())
    state.rng["generators"]["augment"] = torch.zeros(3, dtype=torch.uint8)  # not a generator state
    path.write_bytes(state.to_bytes())


def test_a_state_that_cannot_be_restored_falls_back_and_leaves_no_trace(
    small_splits, uninterrupted, checkpoints, caplog
):
    """The latest state fails half-way through being restored (model and optimiser loaded, the generators not): the
    trial falls back to the previous one; when that fails too, it starts afresh, exactly as if nothing was loaded."""
    unrestorable(checkpoints / FILE_NAME)
    with caplog.at_level(logging.WARNING, logger="fmnist.training.checkpoint"):
        resumed = train_model(HP, small_splits, CPU, seed=SEED, checkpoints=CheckpointStore(checkpoints))
    assert sum("cannot be restored" in r.getMessage() for r in caplog.records) == 1
    assert resumed.resumed_at == 2
    assert_same_weights(uninterrupted, resumed)

    unrestorable(checkpoints / FILE_NAME)
    unrestorable(checkpoints / PREVIOUS_FILE_NAME)
    fresh = train_model(HP, small_splits, CPU, seed=SEED, checkpoints=CheckpointStore(checkpoints))
    assert fresh.resumed_at is None
    assert_same_weights(uninterrupted, fresh)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda hp, seed, splits: (hp.model_copy(update={"lr": 0.05}), seed, splits), "hparams.lr differs"),
        (lambda hp, seed, splits: (hp, seed + 1, splits), "seed differs"),
        (
            lambda hp, seed, splits: (
                hp,
                seed,
                Splits(splits.train_images, 9 - splits.train_labels, splits.val_images, splits.val_labels),
            ),
            "data differs",
        ),
    ],
    ids=["hparams", "seed", "data"],
)
def test_another_trials_checkpoint_is_refused_naming_the_field(small_splits, checkpoints, caplog, change, field):
    resumed = []
    store = CheckpointStore(checkpoints, on_resume=resumed.append)
    hp, seed, splits = change(HP, SEED, small_splits)
    with caplog.at_level(logging.WARNING, logger="fmnist.training.checkpoint"):
        assert store.latest(trial_identity(hp, seed, splits, CPU, None)) is None
    refusals = [r.getMessage() for r in caplog.records if "another trial" in r.getMessage()]
    assert len(refusals) == 2 and all(field in line for line in refusals)  # the latest, then the previous file
    assert resumed == []
    # Its own trial still resumes from the same files: nothing of it was touched.
    assert store.latest(trial_identity(HP, SEED, small_splits, CPU, None)).epoch == 2


def test_a_refused_trial_trains_from_scratch(small_splits, checkpoints, caplog):
    hp = HP.model_copy(update={"epochs": 1})  # another trial: one epoch, and cheap to run
    with caplog.at_level(logging.WARNING, logger="fmnist.training.checkpoint"):
        result = train_model(hp, small_splits, CPU, seed=SEED, checkpoints=CheckpointStore(checkpoints))
    assert result.resumed_at is None and [h["epoch"] for h in result.history] == [1]
    assert any("hparams.epochs differs (3 in the checkpoint, 1 here)" in r.getMessage() for r in caplog.records)


def test_the_checkpoint_records_the_trial_and_every_generator(small_splits, interrupted_dir):
    state = TrainingState.from_bytes((interrupted_dir / FILE_NAME).read_bytes())
    assert state.epoch == 2
    assert state.identity["hparams"] == HP.model_dump(mode="json") and state.identity["seed"] == SEED
    assert len(state.identity["data"]) == 64 and state.identity["code_version"]
    assert state.identity["device"] == "cpu" and state.identity["amp"] == "off"
    assert set(state.rng) == RNG_KEYS and set(state.rng["generators"]) == {"augment"}
    assert state.rng["torch_cuda"] is None  # saved on a CPU


def test_restoring_the_generators_repeats_every_draw():
    generator = torch.Generator().manual_seed(1)

    def draws():
        return (
            torch.rand(3).tolist(),
            torch.rand(3, generator=generator).tolist(),
            np.random.rand(3).tolist(),
            random.random(),
        )

    np.random.standard_normal()  # leaves a cached Gaussian in NumPy's state, which must come back too
    saved = capture_rng(CPU, {"augment": generator})
    blob = TrainingState(1, {}, {}, {}, rng=saved).to_bytes()  # through serialisation, as on resume
    first = draws()
    restore_rng(TrainingState.from_bytes(blob).rng, CPU, {"augment": generator})
    assert draws() == first
    with pytest.raises(ValueError, match="no state for the generators \\['photo'\\]"):
        restore_rng(saved, CPU, {"augment": generator, "photo": torch.Generator()})


def test_on_cuda_the_devices_generator_is_saved_and_restored(monkeypatch):
    """A structure check on a CPU: no GPU here, so torch.cuda's get/set of the generator state are stand-ins that
    record what they are asked; on a machine with CUDA, `test_cuda_generator_round_trip` runs the real thing."""
    cuda = torch.device("cuda", 0)
    cuda_state = torch.arange(16, dtype=torch.uint8)  # a CUDA Philox state: 8 bytes of seed, 8 of offset
    restored = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: cuda_state.clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((state, device)))
    saved = TrainingState.from_bytes(TrainingState(1, {}, {}, {}, rng=capture_rng(cuda, {})).to_bytes()).rng
    assert torch.equal(saved["torch_cuda"], cuda_state)
    restore_rng(saved, cuda, {})
    assert len(restored) == 1 and torch.equal(restored[0][0], cuda_state) and restored[0][1] == cuda
    with pytest.raises(ValueError, match="no CUDA generator state"):
        restore_rng(capture_rng(CPU, {}), cuda, {})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_generator_round_trip():
    cuda = torch.device("cuda")
    generator = torch.Generator(device=cuda).manual_seed(0)
    saved = capture_rng(cuda, {"augment": generator})
    first = (torch.rand(4, device=cuda), torch.rand(4, device=cuda, generator=generator))
    restore_rng(saved, cuda, {"augment": generator})
    second = (torch.rand(4, device=cuda), torch.rand(4, device=cuda, generator=generator))
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_deterministic_kernels_are_switched_on_and_back_off():
    before = (torch.backends.cudnn.deterministic, torch.are_deterministic_algorithms_enabled())
    with deterministic_kernels(True):
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert torch.are_deterministic_algorithms_enabled()
    assert (torch.backends.cudnn.deterministic, torch.are_deterministic_algorithms_enabled()) == before
    with deterministic_kernels(False):
        assert torch.backends.cudnn.deterministic == before[0]


def test_saves_follow_the_interval_keep_the_previous_and_skip_the_last_epoch(tmp_path):
    saved = []
    store = CheckpointStore(tmp_path, every=2, on_save=saved.append)
    assert [e for e in range(1, 8) if store.due(e, last_epoch=6)] == [2, 4]
    for epoch in (2, 4, 6):
        store.save(TrainingState(epoch, {}, {}, {}, rng=capture_rng(CPU, {})))
    assert saved == [2, 4, 6] and store.latest().epoch == 6
    assert TrainingState.from_bytes((tmp_path / PREVIOUS_FILE_NAME).read_bytes()).epoch == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == [PREVIOUS_FILE_NAME, FILE_NAME]
    assert CheckpointStore(tmp_path / "empty").latest() is None


def test_foreign_and_old_files_are_not_checkpoints(tmp_path, caplog):
    (tmp_path / FILE_NAME).write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a FashionFlow training checkpoint"):
        TrainingState.from_bytes((tmp_path / FILE_NAME).read_bytes())
    old = tmp_path / "old.pt"
    torch.save({"format": "fashionflow.training-state/1", "epoch": 1}, old)
    with pytest.raises(ValueError, match=r"format 'fashionflow\.training-state/1'"):
        TrainingState.from_bytes(old.read_bytes())
    with caplog.at_level(logging.WARNING, logger="fmnist.training.checkpoint"):
        assert CheckpointStore(tmp_path).latest() is None  # no previous file to fall back to: start afresh
    assert "skipping unreadable checkpoint" in caplog.text
