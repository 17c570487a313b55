"""The upload path's fuzzing benchmark (benchmarks/fuzz_uploads.py): its quick run fuzzes with coverage and finds
nothing, and it reads libFuzzer's reports of an exception, a slow input and an out-of-memory input as findings."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "fuzz_uploads.py"


def _benchmark():
    """The benchmark as a module (benchmarks/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("fuzz_uploads", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_quick_fuzzing_of_the_upload_path_executes_covers_and_finds_nothing(tmp_path):
    out = tmp_path / "fuzz.json"
    command = [sys.executable, str(SCRIPT), "--quick", "--json", str(out), "--findings", str(tmp_path / "findings")]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    report = json.loads(out.read_text())
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert report["executions"] > 0 and report["exec_per_s"] > 0
    assert report["cov"] > 0 and report["ft"] > 0
    assert report["findings"] == [], report["findings"]
    # Seeded with every allowed format, and bounded as the docstring says.
    assert set(report["seed_formats"]) == {"png", "jpg", "webp", "gif", "bmp", "tif"}
    assert report["bounds"]["timeout_s"] > 0 and report["bounds"]["rss_limit_mb"] > 0
    for figure in ("executions:", "executions/s:", "coverage:", "corpus:", "findings:     0"):
        assert figure in proc.stdout, proc.stdout


# What atheris and libFuzzer print for a Python exception, a slow input and an input past the memory bound.
EXCEPTION_OUTPUT = """\
#2	INITED cov: 990 ft: 2400 corp: 180/1100Kb exec/s: 0 rss: 80Mb
#512	NEW    cov: 1001 ft: 2450 corp: 181/1101Kb lim: 4096 exec/s: 256 rss: 90Mb L: 12/12 MS: 1 ChangeByte-

 === Uncaught Python exception: ===
KeyError: 'boom'
Traceback (most recent call last):
  File "fuzz_uploads.py", line 1, in test_one_input
KeyError: 'boom'

==14400== ERROR: libFuzzer: fuzz target exited
SUMMARY: libFuzzer: fuzz target exited
artifact_prefix='/f/'; Test unit written to /f/crash-06d945942aa26a61be18c3e22bf19bbca8dd2b5d
stat::number_of_executed_units: 600
stat::average_exec_per_sec:     300
stat::peak_rss_mb:              95
"""
TIMEOUT_OUTPUT = """\
bounds: rss_limit_mb=536 (set up at 79 MB) timeout_s=10 max_image_pixels=40000000 work_size=224
#2	INITED cov: 990 ft: 2400 corp: 180/1100Kb exec/s: 0 rss: 80Mb
 === Timeout: 11s elapsed, timeout=10s ===
Current thread 0x00007ff9d67bdb80 (most recent call first):
  File "fuzz_uploads.py", line 233 in test_one_input
ALARM: working on the last Unit for 10 seconds
       and the timeout value is 10 (use -timeout=N to change)
MS: 2 ShuffleBytes-CrossOver-; base unit: a8e30a228997af97f6dfbb005d17b5c126f63e57
artifact_prefix='/f/'; Test unit written to /f/timeout-aa
==18397== ERROR: libFuzzer: timeout after 10 seconds
SUMMARY: libFuzzer: timeout
stat::number_of_executed_units: 976
"""
OOM_OUTPUT = """\
==7== ERROR: libFuzzer: out-of-memory (used: 600Mb; exceeds: 536Mb)
artifact_prefix='/f/'; Test unit written to /f/oom-bb
"""
CRASH_OUTPUT = """\
==7== ERROR: libFuzzer: deadly signal
artifact_prefix='/f/'; Test unit written to /f/crash-cc
"""


def test_libfuzzers_reports_are_read_as_findings():
    bench = _benchmark()
    run = bench.ChildRun()
    bench.parse_output(EXCEPTION_OUTPUT.splitlines(), run)
    assert (run.executions, run.cov, run.ft, run.inited_cov, run.corpus_units) == (600, 1001, 2450, 990, 181)
    [finding] = run.findings
    assert (finding.kind, finding.path, finding.first_line) == (
        "exception",
        "/f/crash-06d945942aa26a61be18c3e22bf19bbca8dd2b5d",
        "KeyError: 'boom'",
    )
    assert "Traceback" in finding.traceback

    run = bench.ChildRun()
    bench.parse_output(TIMEOUT_OUTPUT.splitlines(), run)
    assert (run.rss_limit_mb, run.executions) == (536, 976)
    [finding] = run.findings
    assert (finding.kind, finding.path, finding.first_line) == ("timeout", "/f/timeout-aa", "timeout after 10 seconds")
    assert finding.traceback.startswith("Timeout: 11s elapsed") and "test_one_input" in finding.traceback

    for output, kind, path in ((OOM_OUTPUT, "oom", "/f/oom-bb"), (CRASH_OUTPUT, "crash", "/f/crash-cc")):
        run = bench.ChildRun()
        bench.parse_output(output.splitlines(), run)
        assert [(f.kind, f.path) for f in run.findings] == [(kind, path)]


SLOW_OUTPUT = """\
#24336	REDUCE cov: 1175 ft: 2559 corp: 259/211Kb lim: 6132 exec/s: 1622 rss: 191Mb L: 1508/6062 MS: 1 EraseBytes-
Slowest unit: 12 s:
artifact_prefix='/f/'; Test unit written to /f/slow-unit-dd
#24411	DONE   cov: 1175 ft: 2559 corp: 259/211Kb lim: 6132 exec/s: 387 rss: 191Mb
stat::number_of_executed_units: 24411
"""


def test_an_input_slower_than_the_bound_that_escaped_libfuzzers_timeout_is_a_finding_too():
    bench = _benchmark()
    run = bench.ChildRun()
    bench.parse_output(SLOW_OUTPUT.splitlines(), run)
    assert (run.executions, run.cov, run.corpus_units) == (24411, 1175, 259)
    assert [(f.kind, f.path, f.first_line) for f in run.findings] == [
        ("slow", "/f/slow-unit-dd", f"Slowest unit: 12 s (the bound is {bench.TIME_BOUND_S}s)")
    ]
