"""The whole flow on the smoke profile, through Metaflow's Runner and Client APIs, and resume after a failure."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from fmnist.core.data import CLASS_NAMES
from fmnist.core.real_photos import load_real_photos
from fmnist.evaluation.photos import PHOTO_CONDITIONS
from fmnist.evaluation.wild_photos import WILD_CONDITIONS
from fmnist.release.model_record import ModelRecord
from tests.support.flows import FLOW_FILE, SMOKE_PROFILE, resume_flow, run_flow, session_datastore
from tests.support.hints import check_card_commands

STEPS = ["start", "load", "train", "join", "evaluate", "end"]


def test_smoke_run_stores_every_result_as_an_artifact(smoke_run):
    assert smoke_run.successful
    assert [s.id for s in smoke_run.steps()][::-1] == STEPS
    data = smoke_run.data
    assert data.config["name"] == "smoke"  # the profile, as Metaflow stores the flow's Config
    assert len(data.grid) == 2 and data.seed == 0
    assert data.environment["libraries"]["torch"] != "not installed"
    assert len(data.data_fingerprint) == 64
    assert data.data_summary["train_size"] == 2500 and data.data_summary["val_size"] == 500
    assert 0.3 < data.test_accuracy <= 1.0
    assert sum(map(sum, data.test_metrics["confusion_matrix"])) == 10000

    record = ModelRecord.from_bytes(data.calibrated_model)
    assert record.class_names == CLASS_NAMES
    assert record.metrics["test_accuracy"] == data.test_accuracy
    assert record.provenance["data_fingerprint"] == data.data_fingerprint
    assert record.hparams == data.best_hparams


def test_the_printed_card_commands_work_as_printed(smoke_flow):
    """The end step's card commands, pasted into a shell without $USER in the directory the run started from, write
    the report and the leaderboard cards."""
    run_id = smoke_flow.run.id
    commands = check_card_commands(
        smoke_flow.stdout,
        session_datastore(),
        {"evaluate": "## Confusion matrix", "join": "## Validation accuracy against the swept hyper-parameters"},
    )
    assert {f"{run_id}/evaluate", f"{run_id}/join"} <= {c.split(" card get ")[1].split()[0] for c in commands}
    assert not any(f"FashionFlow/{run_id}/" in c for c in commands)  # the card CLI takes <run-id>/<step>


def test_the_report_judges_real_photographs_of_its_report_split_only(smoke_flow):
    """The smoke profile's 5 real photos per folder of the report split, through the service's path, and the fit
    split's in the photo threshold's fit (more fit photos than the rendered ones alone)."""
    report = smoke_flow.run.data.report
    real = report["real_photos"]
    assert real["count"] == 50 and len(real["rows"]) == 10
    assert all(w["name"] in {p.name for p in load_real_photos("report")} for w in real["worst"])
    assert 0.0 <= real["family_accuracy"] <= 1.0 and real["no_class_unsure"] is not None
    # Sure of the family counts the confident answers and the family-only ones; unsure is sure of neither.
    assert real["family_sure"] >= real["confident"]
    assert all(abs(r["family_sure"] + r["unsure"] - 1.0) < 1e-9 for r in real["rows"])
    assert "real photographs (50)" in smoke_flow.stdout
    policy = ModelRecord.from_bytes(smoke_flow.run.data.calibrated_model).abstention
    rendered = len(PHOTO_CONDITIONS) + len(WILD_CONDITIONS)  # 10 rendered photos per condition at most
    assert policy is not None and policy.num_fit_photos > 10 * rendered  # and the 50 real fit photos
    # An answer declined as unlike the training images is sure of nothing; every real photo with a class among the
    # density's (5 per folder of the fit split's first half, 7 folders with a class) is a component of its own (the
    # profile's default `photo_components_per_family: 0`), but those the normaliser finds no garment in.
    assert all(r["unlike"] is not None and r["unlike"] <= r["unsure"] + 1e-9 for r in real["rows"])
    assert policy.photo_means is not None and 28 <= len(policy.photo_means) <= 35


def test_every_photo_row_is_also_judged_by_thresholds_fitted_without_its_condition(smoke_flow):
    """Leave-one-condition-out: every rendered condition's rows carry the figures under the photo thresholds fitted
    without that condition's photos; the clean rows (no photo condition) carry none (the card's columns:
    tests/flows/test_cards.py)."""
    report = smoke_flow.run.data.report
    for section in ("photos", "wild_photos"):
        rows = report[section]["rows"]
        for row in rows:
            share = row["unseen_confident_share"]
            measured = share is not None and not math.isnan(share)  # NaN: not measured
            assert measured == (row["condition"] != "clean"), (section, row["condition"])
            if measured:
                assert 0.0 <= share <= 1.0


def test_each_trial_keeps_weights_history_and_metrics(smoke_run):
    tasks = list(smoke_run["train"])
    assert len(tasks) == 2
    for task in tasks:
        summary = task["trial_summary"].data
        assert len(task["history"].data) == task["hparams"].data["epochs"]
        assert summary["val_accuracy"] == task["history"].data[-1]["val_accuracy"]
        assert ModelRecord.from_bytes(task["trained_model"].data).metrics["val_accuracy"] == summary["val_accuracy"]


def test_join_picks_the_best_trial_on_validation(smoke_run):
    trials = [t["trial_summary"].data for t in smoke_run["train"]]
    best = max(trials, key=lambda s: (s["val_accuracy"], -s["val_loss"], -s["index"]))
    join = smoke_run["join"].task.data
    assert join.best_trial == best["index"]
    assert [row["rank"] for row in join.leaderboard] == [1, 2]
    assert join.leaderboard[0]["val_accuracy"] >= join.leaderboard[1]["val_accuracy"]


def test_test_set_is_first_touched_in_evaluate(smoke_run):
    for name in ["start", "load", "join"]:
        artifacts = {a.id for a in smoke_run[name].task}
        assert not {"test_metrics", "test_accuracy", "model"} & artifacts, name
        assert not any(a.startswith("test_") for a in artifacts), name
    for task in smoke_run["train"]:
        assert not any(a.id.startswith("test_") for a in task)
    assert "test_metrics" in {a.id for a in smoke_run["evaluate"].task}


@pytest.mark.parametrize("profile_text,message", [("hparams: {widht: 8}", "widht"), ("grid: {lr: [0]}", "lr")])
def test_bad_profile_fails_before_any_step(tmp_path, profile_text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(profile_text)
    # The CLI refuses the profile before a run starts, and the error names the field.
    out = subprocess.run(
        [sys.executable, str(FLOW_FILE), "--config", "config", str(bad), "run"], capture_output=True, text=True
    )
    assert out.returncode != 0 and message in out.stdout + out.stderr


def test_failed_trial_resumes_reusing_finished_trials():
    failed = run_flow(env={"FASHIONFLOW_FAIL_TRIALS": "1"}, max_workers=1)
    assert failed.status == "failed"
    assert not failed.run.successful
    assert "trial 1 failed on purpose" in failed.stderr + failed.stdout

    # resume takes no --config: Metaflow reuses the original run's profile.
    resumed = resume_flow(failed.run.id, max_workers=1)
    assert resumed.status == "successful", resumed.stderr[-3000:]
    run = resumed.run
    by_trial = {t["trial_index"].data: t for t in run["train"]}
    assert set(by_trial) == {0, 1}
    assert by_trial[0].origin_pathspec is not None and by_trial[0].origin_pathspec.startswith(
        f"FashionFlow/{failed.run.id}/"
    )
    assert by_trial[1].origin_pathspec is None
    assert run.data.config["name"] == "smoke"
    assert 0.3 < run.data.test_accuracy <= 1.0


def _with_retries(tmp_path, retries: int):
    """The smoke profile with `compute.retries` set: what a spot-prone Batch profile does, on this machine."""
    profile = tmp_path / f"smoke-retries-{retries}.yaml"
    profile.write_text(SMOKE_PROFILE.read_text() + f"compute:\n  retries: {retries}\n")
    return profile


def test_a_killed_trial_is_retried_and_continues_from_its_checkpoint(tmp_path):
    """SIGKILL of the training process after epoch 1 of 2 (a spot reclamation): the retry resumes at epoch 2."""
    result = run_flow(_with_retries(tmp_path, 1), env={"FASHIONFLOW_KILL_TRIALS": "1:1"}, max_workers=1)
    assert result.status == "successful", result.stderr[-3000:]
    trials = {t["trial_index"].data: t for t in result.run["train"]}
    assert trials[1]["trial_summary"].data["resumed_at_epoch"] == 2
    assert trials[1]["trial_summary"].data["attempt"] == 1
    assert trials[0]["trial_summary"].data["resumed_at_epoch"] is None
    assert "resumed at epoch 2" in result.stdout + result.stderr
    # The whole history is there, the resumed epoch after the checkpointed one.
    assert [h["epoch"] for h in trials[1]["history"].data] == [1, 2]


def test_a_killed_trial_without_retries_fails_the_run_and_resume_finishes_it(tmp_path):
    failed = run_flow(_with_retries(tmp_path, 0), env={"FASHIONFLOW_KILL_TRIALS": "1:1"}, max_workers=1)
    assert failed.status == "failed"
    resumed = resume_flow(failed.run.id, max_workers=1)
    assert resumed.status == "successful", resumed.stderr[-3000:]
    trials = {t["trial_index"].data: t for t in resumed.run["train"]}
    assert trials[0].origin_pathspec is not None  # the finished trial was cloned
    assert trials[1].origin_pathspec is None
