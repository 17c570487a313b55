"""ScoreFlow end to end on a small catalogue, against the smoke run's model.

One run (module fixture) scores real scans, product photos and every kind of bad file in three shards; shard 1's
first attempt is SIGKILLed after its second batch (the test hook standing in for a reclaimed spot instance) and its
retry resumes from the checkpointed rows. The table is read back with the Client API and compared with the service's
own answers over HTTP for the same bytes. A second, tiny run fails one shard and `resume` re-scores only that one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch  # noqa: F401 - before metaflow: torch fails to import once metaflow's vendored typing_extensions is loaded
import yaml

from fmnist.release.catalogue import probability_column
from tests.support.catalogue import (
    BAD_FILES,
    resume_score_flow,
    run_score_flow,
    score_profile,
    write_catalogue,
)
from tests.support.flows import session_datastore
from tests.support.hints import check_card_commands
from tests.support.images import encode, real_test_images

KILLED_SHARD = 1


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    folder = tmp_path_factory.mktemp("catalogue")
    return folder, write_catalogue(folder)


@pytest.fixture(scope="module")
def scored(smoke_run, catalogue, tmp_path_factory):
    """The ScoreFlow run: 50 files, 3 shards of batches of 8, shard 1 killed once and retried."""
    import os

    folder, _ = catalogue
    work = tmp_path_factory.mktemp("score")
    profile = score_profile(work / "profile.yaml")
    data = yaml.safe_load(profile.read_text())
    data["compute"]["retries"] = 1
    profile.write_text(yaml.safe_dump(data))
    env = {**os.environ, "SCOREFLOW_KILL_SHARDS": f"{KILLED_SHARD}:2"}
    result = run_score_flow(profile, env=env, input=str(folder), run=smoke_run.pathspec, output=str(work / "out"))
    assert result.status == "successful", result.stderr[-3000:]
    return result, work / "out"


def test_the_table_has_every_file_exactly_once_with_bad_files_as_errors(scored, catalogue):
    result, _ = scored
    folder, files = catalogue
    table = result.run.data.table  # the Client API gives back a pandas DataFrame
    assert isinstance(table, pd.DataFrame)
    assert sorted(table["path"]) == sorted(str(folder / name) for name in files)
    assert table["path"].is_unique
    errors = dict(zip(table["path"], table["error"], strict=True))
    for name, reason in BAD_FILES.items():
        assert str(errors[str(folder / name)]).startswith(reason), name
    good = table[table["error"].isna()]
    assert len(good) == len(files) - len(BAD_FILES) and good["class_index"].notna().all()
    summary = result.run.data.summary
    assert (summary["images"], summary["unreadable"]) == (len(files), len(BAD_FILES))


def test_the_printed_card_command_works_as_printed(scored):
    result, _ = scored
    check_card_commands(result.stdout, session_datastore(), {"join": "## Classes against the training prior"})


def test_a_killed_shard_resumed_from_its_checkpoint(scored):
    result, _ = scored
    report = {s["index"]: s for s in result.run["join"].task.data.shard_report}
    killed = report[KILLED_SHARD]
    assert killed["attempt"] == 1 and killed["restored"] == 2 * 8  # two batches of 8 were checkpointed
    assert killed["scored"] == killed["images"] - killed["restored"]
    assert all(s["attempt"] == 0 and s["restored"] == 0 for i, s in report.items() if i != KILLED_SHARD)


def test_answers_equal_the_services_for_the_same_bytes(scored, catalogue, smoke_run):
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.settings import Settings

    result, _ = scored
    folder, files = catalogue
    table = result.run.data.table.set_index("path")
    good = [name for name in sorted(files) if name not in BAD_FILES]
    with TestClient(create_app(Settings(run=smoke_run.pathspec, device="cpu"))) as client:
        answer = client.post("/predict/batch", files=[("files", (n, files[n], "image/png")) for n in good])
    assert answer.status_code == 200, answer.text
    names = [probability_column(n) for n in _class_names(smoke_run)]
    for name, prediction in zip(good, answer.json()["predictions"], strict=True):
        row = table.loc[str(folder / name)]
        assert row["class_index"] == prediction["class_index"], name
        np.testing.assert_allclose(row[names].to_numpy(float), prediction["probabilities"], rtol=0, atol=1e-6)
        assert bool(row["confident"]) == prediction["confident"]
        assert bool(row["class_confident"]) == prediction["class_confident"]
        assert (None if pd.isna(row["unsure_reason"]) else row["unsure_reason"]) == prediction["unsure_reason"]
        assert (None if pd.isna(row["family"]) else row["family"]) == prediction["family"]
        assert bool(row["inverted"]) == prediction["inverted"]


def _class_names(run) -> list[str]:
    from fmnist.release.model_record import ModelRecord

    return list(ModelRecord.from_bytes(run.data.calibrated_model).class_names)


def test_the_runs_are_linked_and_the_table_written(scored, smoke_run):
    import metaflow

    result, out = scored
    run = result.run
    assert run.data.model_pathspec == smoke_run.pathspec
    metaflow.namespace(None)
    assert f"scored_by:{run.pathspec}" in metaflow.Run(smoke_run.pathspec).user_tags
    assert f"model:{smoke_run.pathspec}" in metaflow.Run(run.pathspec).user_tags
    written = pd.read_parquet(out / f"ScoreFlow-{run.id}.parquet")
    assert run.data.output_url == str(out / f"ScoreFlow-{run.id}.parquet")
    pd.testing.assert_frame_equal(written.convert_dtypes(), run.data.table.convert_dtypes())


def test_the_card_shows_the_catalogue(scored, smoke_run):
    from tests.flows.test_cards import card_of, images_of, text_of

    result, _ = scored
    _html, components = card_of(result.run["join"].task)
    text = text_of(components)
    assert f"Catalogue scored by {smoke_run.pathspec}" in text and "images/s" in text
    assert "training prior" in text and "Unreadable files" in text and "bad/bomb.png" in text
    assert "Drift against the model" in text and "class_divergence" in text
    assert len(images_of(components)) == 2  # classes against the prior, least confident thumbnails


def test_resume_rescores_only_the_failed_shard(smoke_run, tmp_path):
    import os

    images, _ = real_test_images(4)
    folder = tmp_path / "images"  # the profile stays out of the catalogue
    folder.mkdir()
    for i, pixels in enumerate(images):
        (folder / f"{i}.png").write_bytes(encode(pixels))
    profile = score_profile(tmp_path / "profile.yaml", shards=2, batch_size=2)
    env = {**os.environ, "SCOREFLOW_FAIL_SHARDS": "1"}
    # One task at a time: shard 0 finishes before shard 1 fails (a failure stops the tasks still running).
    failed = run_score_flow(profile, env=env, input=str(folder), run=smoke_run.pathspec, max_workers=1)
    assert failed.status == "failed"

    resumed = resume_score_flow(failed.run.id)
    assert resumed.status == "successful", resumed.stderr[-3000:]
    shards = {t.data.shard_index: t for t in resumed.run["score"]}
    (done_before,) = [t for t in failed.run["score"] if t.successful]
    assert shards[0].origin_pathspec == done_before.pathspec  # shard 0 cloned from the failed run
    assert shards[1].origin_pathspec is None and shards[1].data.shard_stats["scored"] == 2  # shard 1 scored
    assert sorted(resumed.run.data.table["path"]) == sorted(str(folder / f"{i}.png") for i in range(4))
