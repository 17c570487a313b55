"""The training benchmark runs end to end in its quick mode and reports every figure it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_train_speed_quick_reports_baseline_and_profile(tmp_path):
    out = tmp_path / "speed.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train_speed.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "img/s x" in proc.stdout and "per-epoch test accuracy" in proc.stdout
    report = json.loads(out.read_text())
    baseline, ours = report["results"]
    assert baseline["label"].startswith("baseline") and ours["label"] == "fmnist default profile"
    for result in (baseline, ours):
        assert result["images_per_second"] > 0 and 0.1 < result["final_test_accuracy"] <= 1.0
        assert {"epoch_seconds", "test_accuracy", "train_seconds"} <= set(result["history"][0])
    assert ours["eval_seconds_total"] >= 0


def test_photo_robustness_benchmark_reports_every_condition_on_validation_only(smoke_run, tmp_path):
    out = tmp_path / "photos.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "photo_robustness.py"),
            "--run",
            smoke_run.pathspec,
            "--per-class",
            "1",
            "--fit-per-class",
            "1",
            "--size",
            "64",
            "--nongarments",
            "2",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "validation only" in proc.stdout and "worst realistic (in the wild)" in proc.stdout
    assert "unsure by the model's scores alone" in proc.stdout
    report = json.loads(out.read_text())
    assert report["run"] == smoke_run.pathspec and report["studio"][0]["condition"] == "clean"
    # The policy was refitted on half the validation split (clean images and photos), never on test images.
    val_size = smoke_run.data.data_summary["val_size"]
    assert report["policy"]["num_fit_examples"] == val_size // 2 and report["policy"]["num_fit_photos"] > 0
    assert report["held_out_clean"]["num_examples"] == val_size - val_size // 2
    studio = {r["condition"] for r in report["studio"]}
    wild = {r["condition"] for r in report["wild"]}
    assert {"grey_backdrop", "underexposed", "uneven_light", "noise_jpeg", "rotation"} <= studio
    assert {"plain", "shadow_edge", "wood_backdrop", "hanger_and_tag", "cut_by_frame"} <= wild
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in report["studio"] + report["wild"])
    assert set(report["nongarments"]["sets"]) == {"synthetic", "photographs", "faces", "digits"}
