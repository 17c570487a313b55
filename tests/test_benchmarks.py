"""The training benchmark runs end to end in its quick mode and reports every figure it promises."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert "img/s x" in proc.stdout and "per-epoch validation accuracy" in proc.stdout
    report = json.loads(out.read_text())
    baseline, ours = report["results"]
    assert baseline["label"].startswith("baseline") and ours["label"] == "fmnist default profile"
    for result in (baseline, ours):
        assert result["images_per_second"] > 0 and 0.1 < result["final_val_accuracy"] <= 1.0
        assert {"epoch_seconds", "val_accuracy", "train_seconds"} <= set(result["history"][0])
    assert ours["eval_seconds_total"] >= 0


def test_frontier_quick_scores_candidates_on_validation_against_the_current_profile(tmp_path):
    out = tmp_path / "frontier.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "frontier.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "validation split only" in proc.stdout and "side by side on 1 core each" in proc.stdout
    report = json.loads(out.read_text())
    current, bf16 = report["rows"]
    assert current["config"] == "current" and bf16["amp"] == "torch.bfloat16"
    for row in report["rows"]:
        assert row["wall_seconds"] > row["train_seconds"] > 0 and row["threads"] == 1
        assert 0.1 < row["val_accuracy"] <= 1.0 and 0.1 < row["val_accuracy_flip_tta"] <= 1.0
        assert row["parameters"] > 0 and row["hparams"]["epochs"] == 1
        assert (
            0.0 <= row["real_photo_accuracy"] <= row["real_photo_family_accuracy"] <= 1.0 and row["real_photos"] > 500
        )
        # Calibration on the half of validation the temperature was not fitted on; a fitted temperature lowers it.
        assert 0.0 <= row["val_ece_after"] <= row["val_ece_before"] + 0.02 and 0.0 < row["val_ece_before"] < 1.0
    assert bf16["parameters"] == 61050 and bf16["hparams"]["width"] == 16  # the candidate names its shape in full
    parallel = report["parallelism"]
    assert parallel["trials"] == 2 and parallel["parallel_one_core_each_seconds"] > 0
    assert parallel["sequential_all_cores_seconds"] > 0


def test_frontier_trains_each_candidate_with_every_seed_asked_and_averages_them(tmp_path):
    out = tmp_path / "seeds.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "frontier.py"), "--train-subset", "3000", "--epochs", "1"]
    command += [
        "--val-size",
        "500",
        "--only",
        "current",
        "--seeds",
        "0",
        "1",
        "--no-parallel-check",
        "--json",
        str(out),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "seed 1" in proc.stdout and "mean over seeds" in proc.stdout
    report = json.loads(out.read_text())
    first, second = report["rows"]
    assert (first["config"], first["seed"]) == ("current", 0) and (second["config"], second["seed"]) == ("current", 1)
    # Two seeds, two different networks: not the same trial scored twice.
    assert first["real_no_class_top_probability"] != second["real_no_class_top_probability"]
    (mean,) = report["seed_means"]
    assert mean["seeds"] == [0, 1]
    for key in ("val_accuracy_flip_tta", "real_photo_accuracy"):
        assert mean[key] == pytest.approx((first[key] + second[key]) / 2)
        assert mean[f"{key}_range"] == [min(first[key], second[key]), max(first[key], second[key])]


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
            "--real-per-folder",
            "3",
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
    # The OOD threshold's share of held-out scans, beside the share a quantile of in-sample scores would flag.
    assert 0.0 <= report["held_out_clean"]["ood_flagged_in_sample_quantile"] <= 1.0
    assert "held-out clean images unlike the training images:" in proc.stdout
    studio = {r["condition"] for r in report["studio"]}
    wild = {r["condition"] for r in report["wild"]}
    assert {"grey_backdrop", "underexposed", "uneven_light", "noise_jpeg", "rotation"} <= studio
    assert {"plain", "shadow_edge", "wood_backdrop", "hanger_and_tag", "cut_by_frame"} <= wild
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in report["studio"] + report["wild"])
    # Every rendered condition also judged by the photo thresholds fitted without it (leave-one-condition-out).
    assert all(not math.isnan(r["unseen_confident_share"]) for r in report["wild"] if r["condition"] != "clean")
    assert "fitted without the condition" in proc.stdout
    assert "policy (mahalanobis, feature power 0.5)" in proc.stdout  # the defaults, which --ood-score and
    # --feature-power compare against
    assert set(report["nongarments"]["sets"]) == {"synthetic", "photographs", "faces", "digits"}
    # The real photographs' validation split, 3 per folder: every folder judged, hats and the like by "unsure".
    real = report["real_photos"]
    assert real["count"] == 30 and {r["folder"] for r in real["rows"]} >= {"t-shirt", "shoes", "hat"}
    assert "real photographs, validation split (30)" in proc.stdout
    assert next(r for r in real["rows"] if r["folder"] == "hat")["judged_by"] == "unsure"


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed (apt-get install wrk)")
def test_fault_benchmark_quick_reports_every_scenario_and_health_answers_during_hostile_uploads(smoke_run, tmp_path):
    """benchmarks/serve_faults.py --quick: one table of every scenario against the same run's baseline; /health
    answered throughout the hostile uploads, trickled bodies refused with 408, a killed worker replaced, a stalled
    datastore shown in /ready (the figures themselves are the benchmark's business, not the test's)."""
    out = tmp_path / "faults.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "serve_faults.py"), "--quick", "--run", smoke_run.pathspec]
    proc = subprocess.run([*command, "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    names = ["baseline", "hostile uploads", "hostile formats", "slow clients", "slow, no traffic", "worker killed"]
    names.append("datastore stalls")
    table = proc.stdout.split("\nscenario ", 1)[1].splitlines()[1:8]
    assert [line[:17].strip() for line in table] == names
    rows = {r["name"]: r for r in json.loads(out.read_text())[str(ROOT)]}
    assert list(rows) == names
    for r in rows.values():
        assert (r["predict_rps"] > 0) is (r["name"] != "slow, no traffic")  # wrk's traffic in all but that one
        assert r["rss_max_mb"] > 0 and r["health_probes"] > 0
        assert 0 < r["health_p50_ms"] <= r["health_p99_ms"]
    hostile = rows["hostile uploads"]
    assert hostile["health_failures"] == 0 and hostile["hostile_answered"] + hostile["hostile_refused"] > 0
    assert set(hostile["statuses"]) <= {"200", "413", "422", "503"}
    formats = rows["hostile formats"]
    assert formats["health_failures"] == 0 and set(formats["statuses"]) <= {"200", "413", "422", "503"}
    # The ICO is refused by name (the first client starts with it), never opened.
    assert any(n.startswith("ICO claiming 16x16, 6000^2 inside: 422:") for n in formats["notes"]), formats["notes"]
    assert rows["slow clients"]["statuses"].get("408", 0) > 0 and "/health p99 <= 50 ms" in proc.stdout
    killed = rows["worker killed"]["figures"]
    assert killed["replacement_seconds"] > 0  # NaN when no new worker answered
    # Only requests on the killed worker's connections (wrk's or the probe's) may fail.
    failed = rows["worker killed"]["predict_errors"] + rows["worker killed"]["health_failures"]
    assert failed <= killed["killed_worker_connections"]
    assert rows["datastore stalls"]["figures"]["problem_shown_seconds"] > 0
    assert any("took longer than" in note for note in rows["datastore stalls"]["notes"])


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed (apt-get install wrk)")
def test_soak_benchmark_quick_prints_a_row_per_slice_and_the_verdicts(smoke_run, tmp_path):
    """benchmarks/serve_soak.py --quick: 3 slices of mixed wrk traffic beside hostile and slow clients, one row each;
    the bad files in wrk's rotation answered 4xx, no 5xx but 503 from anyone, and the verdicts printed (whether the
    memory and latency targets are met in 15 s is the benchmark's business, not the test's)."""
    out = tmp_path / "soak.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "serve_soak.py"), "--quick", "--run", smoke_run.pathspec]
    proc = subprocess.run([*command, "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = proc.stdout.split("\nmin ", 1)[1].splitlines()[1:4]
    assert [line.split()[0] for line in table] == ["1", "2", "3"]
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert [r["minute"] for r in rows] == [1, 2, 3] and report["slice_seconds"] == 5
    for r in rows:
        assert r["requests_per_s"] > 0 and r["ok"] > 0 and 0 < r["rss_min_mb"] <= r["rss_end_mb"] <= r["rss_max_mb"]
        assert r["health_probes"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"]
        # A fifth of wrk's requests are bad files: each answered 4xx (422), give or take the requests in flight.
        assert abs(r["client_errors"] - r["requests"] * report["bad_share"]) <= report["connections"] + 2, r
        assert set(r["statuses"]) <= {"200", "422", "503"}
    assert report["other_5xx"] == {"wrk": 0, "hostile clients": 0, "slow clients": 0}
    assert report["health_failures"] == 0
    # The hostile clients got answers, every kind refused or answered but never 5xx but 503.
    hostile = [s for kind in report["hostile_kinds"].values() for s in kind]
    assert hostile and set(hostile) <= {"200", "413", "422", "503"}
    assert any("408" in r["slow"] for r in rows)  # trickled bodies refused at the (quick) deadline
    for verdict in ("worker RSS", "wrk p99", "no 5xx but 503", "/health answered every probe"):
        assert any(line.startswith(("[met] ", "[MISSED] ")) and verdict in line for line in proc.stdout.splitlines())
