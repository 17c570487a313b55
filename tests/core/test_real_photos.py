"""The real photographs' copy: every file checked against the manifest, a clear error naming a changed or missing
file, labels as the issue of each folder says, and a split that is disjoint, complete and recorded."""

from __future__ import annotations

import csv
import re
import shutil

import pytest

from fmnist.core.real_photos import (
    DATA_DIR,
    FAMILIES,
    LABELS,
    MANIFEST,
    SPLITS,
    RealPhotoError,
    fit_parts,
    load_real_photos,
    sample_per_folder,
)


@pytest.fixture
def copy_of_data(tmp_path):
    """A copy of the manifest and two photos of each split, to break."""
    with open(DATA_DIR / MANIFEST, newline="") as f:
        rows = list(csv.DictReader(f))
    kept = [next(r for r in rows if r["split"] == s) for s in SPLITS] + [r for r in rows if r["split"] == "fit"][1:2]
    with open(tmp_path / MANIFEST, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    for row in kept:
        (tmp_path / row["file"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(DATA_DIR / row["file"], tmp_path / row["file"])
    return tmp_path, kept


def test_every_split_loads_verified_and_the_splits_are_disjoint_and_complete():
    loaded = {split: load_real_photos(split) for split in SPLITS}
    names = [p.name for photos in loaded.values() for p in photos]
    assert len(names) == len(set(names)) == 3068  # the upstream train/ folder, every photo exactly once
    for split, photos in loaded.items():
        assert {p.folder for p in photos} == set(LABELS)  # every folder in every split
        assert all(p.split == split and p.data[:2] == b"\xff\xd8" for p in photos)  # JPEG bytes
    shares = {split: len(photos) / 3068 for split, photos in loaded.items()}
    assert shares["fit"] == pytest.approx(0.5, abs=0.01) and shares["report"] == pytest.approx(0.25, abs=0.01)


def test_the_split_is_the_recorded_one():
    """The split is read from the manifest, not drawn by the code: the same names come back every time."""
    first = [p.name for p in load_real_photos("report")]
    with open(DATA_DIR / MANIFEST, newline="") as f:
        recorded = [r["file"] for r in csv.DictReader(f) if r["split"] == "report"]
    assert first == recorded == [p.name for p in load_real_photos("report")]


def test_a_changed_file_is_refused_by_name(copy_of_data):
    root, kept = copy_of_data
    target = root / kept[0]["file"]
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(RealPhotoError, match=re.escape(kept[0]["file"]) + r": SHA-256 .* differs"):
        load_real_photos(kept[0]["split"], root)


def test_a_missing_file_or_manifest_is_refused_by_name(copy_of_data):
    root, kept = copy_of_data
    (root / kept[1]["file"]).unlink()
    with pytest.raises(RealPhotoError, match=re.escape(kept[1]["file"]) + ": cannot be read"):
        load_real_photos(kept[1]["split"], root)
    (root / MANIFEST).unlink()
    with pytest.raises(RealPhotoError, match=r"manifest\.csv: missing"):
        load_real_photos("fit", root)
    with pytest.raises(ValueError, match="split 'test'"):
        load_real_photos("test", root)  # type: ignore[arg-type]


def test_labels_give_one_class_a_family_or_none():
    by_folder = {p.folder: p for p in load_real_photos("validation")}
    assert by_folder["t-shirt"].exact == 0 and by_folder["t-shirt"].right_classes == FAMILIES["tops"]
    assert by_folder["pants"].exact == 1 and by_folder["pants"].right_classes == (1,)
    assert by_folder["longsleeve"].exact is None and by_folder["longsleeve"].right_classes == (0, 2, 4, 6)
    assert by_folder["shoes"].right_classes == (5, 7, 9)
    assert all(by_folder[f].family is None and by_folder[f].right_classes == () for f in ("hat", "shorts", "skirt"))


def test_training_is_taught_the_exact_class_where_it_exists_and_the_family_elsewhere():
    by_folder = {p.folder: p for p in load_real_photos("validation")}
    assert by_folder["t-shirt"].taught_classes == (0,) and by_folder["shirt"].taught_classes == (6,)
    assert by_folder["outwear"].taught_classes == (4,) and by_folder["dress"].taught_classes == (3,)
    assert by_folder["longsleeve"].taught_classes == (0, 2, 4, 6) and by_folder["shoes"].taught_classes == (5, 7, 9)
    assert all(by_folder[f].taught_classes == () for f in ("hat", "shorts", "skirt"))


def test_sample_per_folder_keeps_manifest_order():
    photos = load_real_photos("fit")
    sample = sample_per_folder(photos, 3)
    assert len(sample) == 3 * len(LABELS)
    assert [p.name for p in sample if p.folder == "dress"] == [p.name for p in photos if p.folder == "dress"][:3]


def test_the_fit_split_halves_are_disjoint_complete_stable_and_balanced_per_folder():
    fit = load_real_photos("fit")
    train, calibrate = fit_parts(fit)
    assert {p.name for p in train}.isdisjoint(p.name for p in calibrate)
    assert sorted(p.name for p in train + calibrate) == sorted(p.name for p in fit)
    assert [p.name for p in fit_parts(load_real_photos("fit"))[0]] == [p.name for p in train]
    for folder in LABELS:
        halves = sum(p.folder == folder for p in train), sum(p.folder == folder for p in calibrate)
        assert 0 <= halves[0] - halves[1] <= 1, folder
