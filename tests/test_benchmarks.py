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


def test_photo_robustness_benchmark_reports_every_condition(smoke_run, tmp_path):
    out = tmp_path / "photos.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "photo_robustness.py"),
            "--run",
            smoke_run.pathspec,
            "--per-class",
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
    assert "worst realistic:" in proc.stdout and "non-garments marked unsure overall" in proc.stdout
    report = json.loads(out.read_text())
    assert report["run"] == smoke_run.pathspec and report["rows"][0]["condition"] == "clean"
    conditions = {r["condition"] for r in report["rows"]}
    assert {"grey_backdrop", "underexposed", "uneven_light", "noise_jpeg", "rotation"} <= conditions
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in report["rows"])
