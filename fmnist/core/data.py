"""Find, verify and load the real Fashion-MNIST IDX files; split off a stratified validation set.

The files are looked for where the user points ($FMNIST_DATA_DIR, then the profile's `data.dir`), then in the
Debian package's location, then in the user cache; if none has them they are downloaded from the official
mirror into the cache. Whatever the source, the decompressed bytes are checked against the published dataset
(SHA-256), the IDX headers, the shapes and the per-class label counts, so a corrupt or foreign file is an error
that names the file and what is wrong with it.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np

log = logging.getLogger(__name__)

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
NUM_CLASSES = len(CLASS_NAMES)
# Garment families: the classes a shopper would call by one name. A photo's class within a family (a T-shirt or a
# shirt, a sneaker or a sandal) is often beyond a 28x28 view where the family is not, so photo answers can be sure of
# the family alone (`fmnist.trust.abstention`); real photos of a family without a class are labelled by it.
FAMILIES: dict[str, tuple[int, ...]] = {
    "tops": (0, 2, 4, 6),  # T-shirt/top, Pullover, Coat, Shirt
    "trousers": (1,),
    "dress": (3,),
    "footwear": (5, 7, 9),  # Sandal, Sneaker, Ankle boot
    "bag": (8,),
}
# The family of each class, in class-index order.
FAMILY_OF: tuple[str, ...] = tuple(next(f for f, cs in FAMILIES.items() if c in cs) for c in range(NUM_CLASSES))
IMAGE_SIZE = 28
# Mean and standard deviation of the 60000 training images' pixels scaled to [0, 1]. Training and serving both
# normalise with these, so they travel in the model record.
PIXEL_MEAN = 0.2860
PIXEL_STD = 0.3530

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
)


@dataclass(frozen=True)
class IdxSpec:
    """What one IDX file must contain."""

    stem: str  # file name without ".gz"
    magic: int  # 0x00000803: uint8 3-d images; 0x00000801: uint8 1-d labels
    shape: tuple[int, ...]
    sha256: str  # of the decompressed bytes, as published upstream


FILES = {
    "train_images": IdxSpec(
        "train-images-idx3-ubyte",
        0x803,
        (60000, 28, 28),
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    ),
    "train_labels": IdxSpec(
        "train-labels-idx1-ubyte",
        0x801,
        (60000,),
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    ),
    "test_images": IdxSpec(
        "t10k-images-idx3-ubyte",
        0x803,
        (10000, 28, 28),
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    ),
    "test_labels": IdxSpec(
        "t10k-labels-idx1-ubyte",
        0x801,
        (10000,),
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    ),
}
# Fashion-MNIST is balanced: every class has exactly this many images in each part.
CLASS_COUNTS = {"train_labels": 6000, "test_labels": 1000}
TEST_SIZE = FILES["test_labels"].shape[0]  # 10000: the size every run reports without opening the test split

# Who may open the test split, and why: (file relative to the folder holding `fmnist/`, function's qualified name).
# Nothing else may, so no default, threshold or choice can be made on the test images; `FashionMNIST.test_split`
# checks its caller against this list at run time, and tests/test_test_set_discipline.py checks the source.
PACKAGE_PARENT = Path(__file__).resolve().parents[2]
TEST_SPLIT_READERS = MappingProxyType(
    {
        ("fmnist/pipeline.py", "evaluate_selected"): "the evaluate step: the test set's one reader in a run",
        ("benchmarks/serve_load.py", "load_traffic_images"): "load traffic for the service benchmarks; chooses nothing",
        ("tests/support/images.py", "real_test_images"): "real inputs for the image and service tests",
        ("tests/evaluation/test_photos.py", "test_set"): "real garments the photo renderer's tests draw on",
    }
)
_TEST_SPECS = frozenset(key for key in FILES if key.startswith("test_"))


class DataError(RuntimeError):
    """A Fashion-MNIST file is missing, unreadable or not what it should be; the message names the file."""


class TestSplitRefused(PermissionError):
    """Code that is not on `TEST_SPLIT_READERS` asked for the test split; the message names it."""

    __test__ = False  # not a test class, whatever pytest's name rule thinks


def _caller(depth: int) -> tuple[str, str]:
    """(file relative to PACKAGE_PARENT, qualified function name) of the frame `depth` levels above the caller."""
    frame = sys._getframe(depth + 1)
    path = Path(frame.f_code.co_filename).resolve()
    where = path.relative_to(PACKAGE_PARENT).as_posix() if path.is_relative_to(PACKAGE_PARENT) else str(path)
    return where, frame.f_code.co_qualname


@dataclass(frozen=True)
class FashionMNIST:
    """The verified dataset as compact uint8 arrays; the test split is sealed behind `test_split()`."""

    train_images: np.ndarray  # (60000, 28, 28) uint8
    train_labels: np.ndarray  # (60000,) uint8
    source: str  # directory the files were read from
    fingerprint: str  # SHA-256 over the four files' decompressed digests
    _sealed_test: tuple[np.ndarray, np.ndarray] = field(repr=False, compare=False)  # (10000, 28, 28), (10000,)

    def test_split(self) -> tuple[np.ndarray, np.ndarray]:
        """The test images (10000, 28, 28) and labels (10000,) uint8, for the callers on TEST_SPLIT_READERS.

        Raises TestSplitRefused, naming the caller, for anyone else.
        """
        where, function = _caller(1)
        if (where, function) not in TEST_SPLIT_READERS:
            allowed = ", ".join(f"{f}:{name}" for f, name in TEST_SPLIT_READERS)
            raise TestSplitRefused(
                f"{where}:{function} asked for the Fashion-MNIST test split, which only {allowed} may open: "
                "choose and tune on the validation split (fmnist.core.data.make_splits)"
            )
        log.info("test split opened by %s:%s (%s)", where, function, TEST_SPLIT_READERS[where, function])
        return self._sealed_test


def cache_dir() -> Path:
    """The per-user download cache ($XDG_CACHE_HOME/fashionflow/fashion-mnist)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "fashionflow" / "fashion-mnist"


def candidate_dirs(data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Directories searched for the files, in order of preference."""
    dirs = [os.environ.get("FMNIST_DATA_DIR"), data_dir, DEBIAN_DIR, cache_dir()]
    return [Path(d).expanduser() for d in dirs if d]


def _file_in(directory: Path, spec: IdxSpec) -> Path | None:
    for name in (spec.stem + ".gz", spec.stem):
        if (directory / name).is_file():
            return directory / name
    return None


def find_data_dir(data_dir: str | os.PathLike[str] | None = None, download: bool = True) -> Path:
    """The first candidate directory holding all four files; downloads into the cache if none does."""
    searched = candidate_dirs(data_dir)
    # A directory the user named that holds only some of the files is a mistake to report, not to skip past.
    explicit = searched[: len([d for d in (os.environ.get("FMNIST_DATA_DIR"), data_dir) if d])]
    for directory in searched:
        found = [spec for spec in FILES.values() if _file_in(directory, spec)]
        if len(found) == len(FILES):
            return directory
        if directory in explicit and directory.is_dir():
            missing = [s.stem + "[.gz]" for s in FILES.values() if s not in found]
            raise DataError(f"{directory} is missing Fashion-MNIST file(s): {', '.join(missing)}")
        if directory in explicit:
            log.warning("%s does not exist; looking further", directory)
    if not download:
        raise DataError(
            "Fashion-MNIST not found in "
            + ", ".join(map(str, searched))
            + " and downloading is switched off (data.download: false)"
        )
    return download_files(cache_dir())


def download_files(target: Path) -> Path:
    """Download the four .gz files from the official mirrors into `target`; they are verified on load."""
    from torchvision.datasets.utils import download_url  # torchvision retries and writes atomically

    target.mkdir(parents=True, exist_ok=True)
    for spec in FILES.values():
        if _file_in(target, spec):
            continue
        errors = []
        for mirror in MIRRORS:
            try:
                log.info("downloading %s from %s", spec.stem, mirror)
                download_url(mirror + spec.stem + ".gz", str(target), spec.stem + ".gz")
                break
            except Exception as err:
                errors.append(f"{mirror}: {err}")
        else:
            raise DataError(f"could not download {spec.stem}.gz: " + "; ".join(errors))
    return target


def read_idx(path: Path, spec: IdxSpec) -> tuple[np.ndarray, str]:
    """Read and verify one IDX file (gzipped or not); returns the array and its decompressed SHA-256.

    The test files are read by `load_dataset` alone, which seals them: a direct read would walk around the guard.
    """
    if spec in (FILES[key] for key in _TEST_SPECS) and _caller(1) != ("fmnist/core/data.py", "load_dataset"):
        where, function = _caller(1)
        raise TestSplitRefused(
            f"{where}:{function} read {spec.stem} directly; the test split opens only through FashionMNIST.test_split()"
        )
    try:
        raw = path.read_bytes()
        data = gzip.decompress(raw) if path.suffix == ".gz" else raw
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: cannot decompress ({err}); the file is truncated or corrupt") from None

    ndim = len(spec.shape)
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: only {len(data)} bytes, shorter than an IDX header; the file is truncated")
    magic = int.from_bytes(data[:4], "big")
    if magic != spec.magic:
        raise DataError(f"{path}: wrong IDX magic number {magic:#010x}, expected {spec.magic:#010x}")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if shape != spec.shape:
        raise DataError(f"{path}: header says shape {shape}, expected {spec.shape}")
    expected_bytes = header + int(np.prod(shape))
    if len(data) != expected_bytes:
        raise DataError(f"{path}: {len(data)} bytes after decompression, expected {expected_bytes}; truncated?")
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise DataError(
            f"{path}: content checksum {digest[:16]}... does not match Fashion-MNIST's {spec.sha256[:16]}...; "
            "the file is corrupt or is a different dataset"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy(), digest


def _check_labels(path: Path, labels: np.ndarray, per_class: int) -> None:
    if labels.max() >= NUM_CLASSES:
        raise DataError(f"{path}: label {labels.max()} outside 0-{NUM_CLASSES - 1}")
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    if not (counts == per_class).all():
        raise DataError(f"{path}: class counts {counts.tolist()}, expected {per_class} of each class")


def load_dataset(data_dir: str | os.PathLike[str] | None = None, download: bool = True) -> FashionMNIST:
    """Locate, verify and load the real Fashion-MNIST train and test sets."""
    directory = find_data_dir(data_dir, download)
    arrays: dict[str, np.ndarray] = {}
    digests = []
    for key, spec in FILES.items():
        path = _file_in(directory, spec) or directory / (spec.stem + ".gz")
        arrays[key], digest = read_idx(path, spec)
        digests.append(digest)
        if key in CLASS_COUNTS:
            _check_labels(path, arrays[key], CLASS_COUNTS[key])
    log.info("loaded and verified Fashion-MNIST from %s", directory)
    return FashionMNIST(
        train_images=arrays["train_images"],
        train_labels=arrays["train_labels"],
        source=str(directory),
        fingerprint=hashlib.sha256("".join(digests).encode()).hexdigest(),
        _sealed_test=(arrays["test_images"], arrays["test_labels"]),
    )


def stratified_split(labels: np.ndarray, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, stratified split of indices into (train, validation); each class keeps its share in both.

    Returns sorted int64 index arrays. The same labels, size and seed always give the same split.
    """
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    # Per-class validation counts proportional to class frequency, rounded so they sum to val_size exactly.
    exact = counts * val_size / len(labels)
    take = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - take), kind="stable")[: val_size - take.sum()]:
        take[i] += 1
    val = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take, strict=True)]
    val_idx = np.sort(np.concatenate(val))
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    return train_idx.astype(np.int64), val_idx.astype(np.int64)


@dataclass(frozen=True)
class Splits:
    """The arrays a training split needs: training and validation parts of the training set."""

    train_images: np.ndarray  # (N_train, 28, 28) uint8
    train_labels: np.ndarray  # (N_train,) uint8
    val_images: np.ndarray  # (N_val, 28, 28) uint8
    val_labels: np.ndarray  # (N_val,) uint8
    # Real phone photographs trained on beside the scans (`HParams.real_photo_share`), as the model sees them, and the
    # classes counted right for each (one for a T-shirt, the family for a longsleeve or a pair of shoes); None: none.
    photo_images: np.ndarray | None = None  # (M, 28, 28) uint8
    photo_right: np.ndarray | None = None  # (M, 10) bool


def make_splits(data: FashionMNIST, val_size: int, seed: int, train_subset: int | None = None) -> Splits:
    """Optionally take a stratified subset of the training set, then split off the validation set."""
    images, labels = data.train_images, data.train_labels
    if train_subset is not None and train_subset < len(labels):
        _, keep = stratified_split(labels, train_subset, seed)
        images, labels = images[keep], labels[keep]
    train_idx, val_idx = stratified_split(labels, val_size, seed + 1)
    return Splits(images[train_idx], labels[train_idx], images[val_idx], labels[val_idx])
