"""The real Fashion-MNIST files load and verify; damaged files fail with errors that name them; splits are sound."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from fmnist.core.data import (
    CLASS_NAMES,
    FILES,
    DataError,
    candidate_dirs,
    find_data_dir,
    load_dataset,
    make_splits,
    stratified_split,
)
from tests.support.images import real_test_images


@pytest.fixture(scope="module")
def dataset():
    return load_dataset(download=False)


@pytest.fixture
def data_copy(tmp_path: Path) -> Path:
    """A private, decompressed-or-not copy of the real files that a test may damage."""
    src = find_data_dir(download=False)
    for spec in FILES.values():
        name = spec.stem + ".gz"
        shutil.copy(src / name if (src / name).exists() else src / spec.stem, tmp_path / name)
    return tmp_path


def test_real_files_have_the_published_shapes_and_balanced_labels(dataset):
    assert dataset.train_images.shape == (60000, 28, 28) and dataset.train_images.dtype == np.uint8
    test_images, test_labels = real_test_images(10000)  # the whole test split, through its accessor
    assert test_images.shape == (10000, 28, 28)
    assert np.bincount(dataset.train_labels).tolist() == [6000] * 10
    assert np.bincount(test_labels).tolist() == [1000] * 10
    assert len(CLASS_NAMES) == 10 and len(dataset.fingerprint) == 64
    # Real images, not zeros: mean pixel close to the published 0.286 * 255.
    assert 70 < dataset.train_images.mean() < 76


def test_user_directory_wins_and_is_verified(data_copy, monkeypatch):
    monkeypatch.setenv("FMNIST_DATA_DIR", str(data_copy))
    assert candidate_dirs()[0] == data_copy
    data = load_dataset(download=False)
    assert data.source == str(data_copy)


def _rewrite(path: Path, mutate) -> None:
    raw = bytearray(gzip.decompress(path.read_bytes()))
    path.write_bytes(gzip.compress(bytes(mutate(raw)), compresslevel=1))


def test_truncated_file_is_named(data_copy):
    path = data_copy / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz.*(truncated|corrupt)"):
        load_dataset(data_copy, download=False)


def test_flipped_byte_fails_the_checksum(data_copy):
    def flip(raw: bytearray) -> bytearray:
        raw[5000] ^= 0xFF
        return raw

    _rewrite(data_copy / "t10k-images-idx3-ubyte.gz", flip)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz.*checksum"):
        load_dataset(data_copy, download=False)


def test_wrong_magic_number_is_reported(data_copy):
    def magic(raw: bytearray) -> bytearray:
        raw[3] = 0x01
        return raw

    _rewrite(data_copy / "train-images-idx3-ubyte.gz", magic)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: wrong IDX magic number 0x00000801"):
        load_dataset(data_copy, download=False)


def test_missing_file_in_user_directory_is_named(data_copy, monkeypatch):
    (data_copy / "t10k-labels-idx1-ubyte.gz").unlink()
    monkeypatch.setenv("FMNIST_DATA_DIR", str(data_copy))
    with pytest.raises(DataError, match=r"missing .*t10k-labels-idx1-ubyte"):
        load_dataset(download=False)


def test_nothing_found_without_download_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setattr("fmnist.core.data.DEBIAN_DIR", tmp_path / "nowhere")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("FMNIST_DATA_DIR", raising=False)
    with pytest.raises(DataError, match=r"not found in .*nowhere.*downloading is switched off"):
        load_dataset(download=False)


def test_split_is_stratified_disjoint_and_reproducible(dataset):
    train_idx, val_idx = stratified_split(dataset.train_labels, 5000, seed=7)
    assert len(val_idx) == 5000 and len(train_idx) == 55000
    assert not np.intersect1d(train_idx, val_idx).size
    assert np.bincount(dataset.train_labels[val_idx]).tolist() == [500] * 10
    again, _ = stratified_split(dataset.train_labels, 5000, seed=7)[::-1]
    assert np.array_equal(again, val_idx)
    other = stratified_split(dataset.train_labels, 5000, seed=8)[1]
    assert not np.array_equal(other, val_idx)


def test_subset_then_split_keeps_classes_balanced(dataset):
    splits = make_splits(dataset, val_size=500, seed=0, train_subset=3000)
    assert len(splits.train_labels) == 2500 and len(splits.val_labels) == 500
    assert np.bincount(splits.train_labels).tolist() == [250] * 10
    assert np.bincount(splits.val_labels).tolist() == [50] * 10
