"""fmnist.release.catalogue without Metaflow: listing, sharding, a shard scored as the service answers, bad files as
rows, and a shard that resumes from the rows an earlier attempt kept."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from fmnist.images.normalise import WORK_SIZE, prepare_opened
from fmnist.images.uploads import open_upload
from fmnist.release.catalogue import (
    ScoreProfileError,
    build_classifier,
    list_inputs,
    parse_score_profile,
    probability_column,
    read_local_files,
    read_table,
    rows_frame,
    score_shard,
    split_shards,
    summarize,
    table_bytes,
)
from fmnist.release.model_record import ModelRecord
from tests.support.catalogue import BAD_FILES, MAX_FILE_BYTES, write_catalogue
from tests.support.flows import CONFIGS


@pytest.fixture(scope="module")
def record(smoke_run) -> ModelRecord:
    return ModelRecord.from_bytes(smoke_run.data.calibrated_model)


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    folder = tmp_path_factory.mktemp("catalogue")
    return folder, write_catalogue(folder, scans=24, photos=3)


# --- listing and sharding ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [0, 1, 2, 7, 50])
@pytest.mark.parametrize("shards", [1, 2, 3, 8, 64])
def test_shards_cover_every_input_exactly_once(count, shards):
    bounds = split_shards(count, shards)
    covered = [i for start, stop in bounds for i in range(start, stop)]
    assert covered == list(range(count))  # every input once, in input order
    assert len(bounds) == min(count, shards)
    sizes = [stop - start for start, stop in bounds]
    assert all(size >= 1 for size in sizes) and (not sizes or max(sizes) - min(sizes) <= 1)


def test_shard_count_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        split_shards(5, 0)


def test_a_folder_lists_every_file_once_skipping_hidden_ones(tmp_path):
    for name in ["b.png", "a/c.jpg", "a/notes.txt", ".hidden.png", ".cache/d.png"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert list_inputs(tmp_path) == [str(tmp_path / n) for n in ["a/c.jpg", "a/notes.txt", "b.png"]]


def test_a_folder_follows_symlinked_folders_once_and_lists_broken_links(tmp_path):
    """Files under a symlinked folder and broken links are inputs too (the link's read fails into a row with the
    reason); a link back up the tree is followed no further than once."""
    inside, outside = tmp_path / "catalogue", tmp_path / "elsewhere"
    (inside / "a").mkdir(parents=True)
    outside.mkdir()
    (inside / "a" / "shoe.png").write_bytes(b"x")
    (outside / "coat.png").write_bytes(b"x")
    (inside / "linked").symlink_to(outside, target_is_directory=True)
    (inside / "gone.png").symlink_to(tmp_path / "deleted.png")
    (inside / "a" / "loop").symlink_to(inside, target_is_directory=True)
    listed = list_inputs(inside)
    assert listed == [str(inside / n) for n in ["a/shoe.png", "gone.png", "linked/coat.png"]]
    contents = read_local_files(MAX_FILE_BYTES)(listed)
    assert "No such file or directory" in contents[1].reason


def test_a_file_name_that_is_not_utf8_is_a_row_the_table_can_hold(record, tmp_path):
    """Such a name (Latin-1 from an old archive) is read by its real bytes and stored with them escaped: Parquet
    refused the name before, failing the shard on every retry."""
    import os

    from tests.support.images import encode, real_test_images

    name = os.fsdecode(b"caf\xe9.png")  # Python holds the undecodable byte as a surrogate escape
    (tmp_path / name).write_bytes(encode(real_test_images(1)[0][0]))
    paths = list_inputs(tmp_path)
    outcome = score_shard(build_classifier(record, "cpu"), paths, read_local_files(MAX_FILE_BYTES))
    (row,) = outcome.rows
    assert row["error"] is None and row["path"] == str(tmp_path / "caf\\xe9.png")
    frame = rows_frame(outcome.rows, record.class_names)
    assert read_table(table_bytes(frame))["path"].tolist() == [row["path"]]
    assert table_bytes(frame, "csv").decode().count("caf\\xe9.png") == 1
    resumed = score_shard(build_classifier(record, "cpu"), paths, read_local_files(MAX_FILE_BYTES), done=[row])
    assert resumed.scored == 0 and resumed.rows == [row]


def test_a_list_file_resolves_relative_paths_and_drops_duplicates(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("# catalogue\nshoe.png\n\n/abs/coat.jpg\nshoe.png\ns3://bucket/bag.png\n")
    assert list_inputs(listing) == [str(tmp_path / "shoe.png"), "/abs/coat.jpg", "s3://bucket/bag.png"]


def test_a_missing_input_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a folder nor a list file"):
        list_inputs(tmp_path / "nowhere")


def test_every_score_profile_is_valid_and_a_typo_is_an_error():
    for path in sorted((CONFIGS / "score").glob("*.yaml")):
        assert parse_score_profile(path.read_text())["name"] == path.stem
    with pytest.raises(ScoreProfileError, match="shard"):
        parse_score_profile("shard: 3\n")


# --- scoring ---------------------------------------------------------------------------------------------------------


def test_a_shard_answers_as_the_service_does(record, catalogue):
    """The service's own path for the same bytes: its classifier (`serving.model_loading.build_classifier`, ONNX
    Runtime on CPU), each upload opened and normalised as the route does, the batch scored in one call."""
    from serving.model_loading import build_classifier as service_classifier
    from serving.settings import Settings

    folder, files = catalogue
    good = [name for name in sorted(files) if name not in BAD_FILES]
    paths = [str(folder / name) for name in good]
    settings = Settings(device="cpu")
    service = service_classifier(record, torch.device("cpu"), settings)
    prepared = [prepare_opened(open_upload(files[n], settings.max_image_pixels, WORK_SIZE)) for n in good]
    expected = service.score(
        np.stack([p.pixels for p in prepared]), [p.empty for p in prepared], [p.photo for p in prepared]
    )

    classifier = build_classifier(record, "cpu")
    assert classifier.runtime == service.runtime == "onnxruntime"
    outcome = score_shard(classifier, paths, read_local_files(MAX_FILE_BYTES), batch_size=5, threads=1)
    assert [row["path"] for row in outcome.rows] == paths and outcome.scored == len(paths)
    for row, want, prep in zip(outcome.rows, expected, prepared, strict=True):
        assert row["class_index"] == want.label and row["class_name"] == record.class_names[want.label]
        probabilities = [row[probability_column(name)] for name in record.class_names]
        np.testing.assert_allclose(probabilities, want.probabilities, rtol=0, atol=1e-6)
        assert (row["confident"], row["class_confident"], row["unsure_reason"], row["family"], row["inverted"]) == (
            want.confident,
            want.class_confident,
            want.unsure_reason,
            want.family,
            prep.inverted,
        )
        assert row["error"] is None and math.isclose(sum(probabilities), 1.0, abs_tol=1e-5)


def test_bad_files_are_rows_with_the_reason(record, catalogue):
    folder, files = catalogue
    paths = list_inputs(folder)
    assert len(paths) == len(files)
    outcome = score_shard(build_classifier(record, "cpu"), paths, read_local_files(MAX_FILE_BYTES), batch_size=7)
    rows = {Path(row["path"]).relative_to(folder).as_posix(): row for row in outcome.rows}
    assert set(rows) == set(files)
    for name, reason in BAD_FILES.items():
        assert rows[name]["error"].startswith(reason), (name, rows[name]["error"])
        assert rows[name]["class_index"] is None and rows[name]["confident"] is None
    scored = [row for name, row in rows.items() if name not in BAD_FILES]
    assert all(row["error"] is None and row["class_index"] is not None for row in scored)

    frame = rows_frame(outcome.rows, record.class_names)
    assert read_table(table_bytes(frame)).equals(frame)
    summary = summarize(frame, record)
    assert (summary["images"], summary["scored"], summary["unreadable"]) == (len(files), len(scored), len(BAD_FILES))
    assert sum(c["count"] for c in summary["classes"]) == len(scored)
    assert summary["unsure"] == sum(not row["confident"] for row in scored)
    family_only = Counter(r["family"] for r in scored if r["confident"] and not r["class_confident"])
    assert summary["family_only"] == dict(family_only)
    assert {e["path"] for e in summary["errors"]} == {str(folder / n) for n in BAD_FILES}

    # A photo confident of its family alone counts as confident, and among the family-only answers.
    unsure = [i for i, row in enumerate(outcome.rows) if row["error"] is None and not row["confident"]]
    confident = [i for i, row in enumerate(outcome.rows) if row["error"] is None and row["confident"]]
    photos = [{**row, "class_confident": row["confident"]} for row in outcome.rows]
    for i, family in zip(unsure[:2] + confident[:1], ["tops", "tops", "footwear"], strict=True):
        photos[i].update(confident=True, class_confident=False, family=family, unsure_reason=None)
    family_photos = summarize(rows_frame(photos, record.class_names), record)
    assert family_photos["unsure"] == summary["unsure"] - 2
    assert family_photos["family_only"] == {"tops": 2, "footwear": 1}


def test_a_resumed_shard_keeps_its_rows_and_scores_only_the_rest(record, catalogue):
    folder, _ = catalogue
    paths = list_inputs(folder)
    classifier, read = build_classifier(record, "cpu"), read_local_files(MAX_FILE_BYTES)
    saved: list[dict] = []

    class Killed(Exception):
        pass

    def killed_after_two_batches(rows):
        saved.extend(rows)
        if len(saved) >= 2 * 6:
            raise Killed  # the attempt dies right after its second checkpoint

    with pytest.raises(Killed):
        score_shard(classifier, paths, read, batch_size=6, on_rows=killed_after_two_batches)
    assert len(saved) == 12

    fresh: list[dict] = []
    resumed = score_shard(classifier, paths, read, batch_size=6, done=saved, on_rows=fresh.extend)
    assert resumed.scored == len(paths) - 12 and len(fresh) == len(paths) - 12
    assert {r["path"] for r in fresh}.isdisjoint(r["path"] for r in saved)
    assert [r["path"] for r in resumed.rows] == paths  # every input exactly once, in order
    whole = score_shard(classifier, paths, read, batch_size=6)
    assert rows_frame(resumed.rows, record.class_names).equals(rows_frame(whole.rows, record.class_names))


def test_an_image_over_the_pixel_limit_is_an_error_row_however_small_its_file(record, tmp_path):
    """The service's pixel limit, not the file size, refuses a picture that decodes to too many pixels: a plain PNG
    of 2100x2000 pixels is a few kilobytes, under the file size limit, and over a limit of 4 megapixels."""
    from PIL import Image

    path = tmp_path / "poster.png"
    Image.new("L", (2100, 2000), 200).save(path)
    assert path.stat().st_size < MAX_FILE_BYTES
    classifier, read = build_classifier(record, "cpu"), read_local_files(MAX_FILE_BYTES)
    (refused,) = score_shard(classifier, [str(path)], read, max_pixels=4_000_000).rows
    assert refused["error"].startswith("image too large to decode safely") and "4000000" in refused["error"]
    assert refused["class_index"] is None
    (scored,) = score_shard(classifier, [str(path)], read, max_pixels=40_000_000).rows  # the profile's default
    assert scored["error"] is None and scored["class_index"] is not None
