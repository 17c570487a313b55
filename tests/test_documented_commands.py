"""What the README and the docs tell a user to type works as written.

Every line of a fenced shell block that names a repository command (`make ...`, `python flows/...`, `python
benchmarks/...`, `fmnist-serve ...`, `fmnist predict ...`) is either run here, against the session's smoke run, or
listed in SKIPPED with the reason. Every one, run or skipped, is checked against the command's own help: a
documented flag or make target the command no longer has fails.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from functools import cache
from pathlib import Path

import httpx
import pytest

from tests.support.flows import ROOT, session_datastore
from tests.support.hints import card_markdown, shell_without_user
from tests.support.releases import free_port

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PYTHON = r"(?:\.venv/bin/)?python3?"
COMMAND = re.compile(rf"^(?:make\s|{PYTHON}\s+(?:flows|benchmarks)/\S+\.py|(?:\.venv/bin/)?fmnist(?:-serve)?(?:\s|$))")

# Run here, against the smoke run: cheap, and what a user types first after a run.
RUN = {
    "make card RUN=<run-id>",
    "make card RUN=<run-id> STEP=join",
    "python flows/fashion_flow.py card view <run-id>/evaluate",
    "python flows/fashion_flow.py card get <run-id>/join leaderboard.html",
    "fmnist-serve --run FashionFlow/<run-id>",
}

# Documented, checked against their help, but not run here; why.
TRAINING = "trains a whole run (minutes to hours); the session's smoke run covers the flow (tests/conftest.py)"
QUICK = "its --quick mode runs in tests/test_benchmarks.py"
QUICK_SERVING = "its --quick mode runs in tests/serving/test_serving.py"
BY_HAND = "a measurement taken by hand (minutes on these cores), nothing to assert but its figures; flags checked"
LONG_BENCHMARK = "a full benchmark (minutes to hours on these cores): its figures are quoted from it"
CLOUD = (
    "needs AWS or a Kubernetes cluster; rendered against the stand-in (tests/flows/test_cloud.py, test_kubernetes.py)"
)
SKIPPED = {
    "make run": TRAINING,
    "make test": "this very test suite",
    "make serve": "the same service as `fmnist-serve`, run below with --run",
    "make score INPUT=photos/": "a whole ScoreFlow run; tests/flows/test_score_flow.py runs ScoreFlow on a catalogue",
    "make card FLOW=promote RUN=<run-id>": "needs a PromoteFlow run: tests/test_promotion.py runs the card command "
    "PromoteFlow prints",
    ".venv/bin/python flows/fashion_flow.py run": TRAINING,
    ".venv/bin/python flows/fashion_flow.py --config config configs/smoke.yaml run": TRAINING,
    ".venv/bin/python flows/fashion_flow.py resume": "needs a failed run; tests/flows/test_fashion_flow.py resumes one",
    ".venv/bin/python benchmarks/train_speed.py [--quick] [--json PATH]": QUICK,
    ".venv/bin/python benchmarks/frontier.py [--quick] [--only NAME ...] [--json PATH]": QUICK,
    ".venv/bin/python benchmarks/serve_load.py [--quick]": QUICK_SERVING,
    ".venv/bin/python benchmarks/serve_wrk.py [--run FashionFlow/<id>]": QUICK_SERVING,
    ".venv/bin/python benchmarks/photo_robustness.py [--run FashionFlow/<id>] [--per-class 20] [--one-view] "
    "[--json PATH]": "tests/test_benchmarks.py runs it on the smoke run with a small sample",
    ".venv/bin/python benchmarks/photo_robustness.py --run FashionFlow/1796485873631808": "a default run's id;"
    " tests/test_benchmarks.py runs the benchmark on the smoke run with a small sample",
    ".venv/bin/python benchmarks/serve_decode.py [--rounds 2]": BY_HAND,
    ".venv/bin/python benchmarks/normalise_cost.py [--rounds 3] [--compare-tree DIR]": BY_HAND,
    ".venv/bin/python benchmarks/outline_screen.py [--garments 30]": BY_HAND,
    ".venv/bin/python benchmarks/fuzz_uploads.py [--minutes 2] [--quick] [--corpus DIR] [--findings DIR] "
    "[--json PATH]": "its --quick mode runs in tests/images/test_upload_fuzzing.py",
    ".venv/bin/python benchmarks/score_throughput.py [--images 2000]": BY_HAND,
    ".venv/bin/python benchmarks/score_throughput.py --end-to-end 100000 --folder DIR": LONG_BENCHMARK,
    ".venv/bin/python benchmarks/serve_faults.py [--quick] [--only hostile] [--service-root DIR]": QUICK,
    ".venv/bin/python benchmarks/serve_soak.py [--quick] [--minutes 20] [--run FashionFlow/<id>]": QUICK,
    '.venv/bin/python benchmarks/frontier.py --only current "no real photos" "real photos 0.05" "real photos 0.2" '
    '--candidate "photo_prob 0.4:photo_prob=0.4" --candidate "rotate_prob 0:rotate_prob=0" --no-parallel-check': (
        "six whole trials (about 20 minutes on these cores); its --quick mode runs in tests/test_benchmarks.py"
    ),
    '.venv/bin/python benchmarks/frontier.py --only current "real photos 0.2" '
    '--candidate "real photos 0.1:real_photo_share=0.1" --candidate "real photos 0.3:real_photo_share=0.3" '
    "--no-parallel-check": (
        "four whole trials (about 13 minutes on these cores); its --quick mode runs in tests/test_benchmarks.py"
    ),
    '.venv/bin/python benchmarks/frontier.py --only current --candidate "label_smoothing 0.05:label_smoothing=0.05" '
    '--candidate "label_smoothing 0.1:label_smoothing=0.1" --no-parallel-check': (
        "three whole trials (about 10 minutes on these cores); its --quick mode runs in tests/test_benchmarks.py"
    ),
    '.venv/bin/python benchmarks/frontier.py --only current --candidate "ema 0.998:ema_decay=0.998" '
    '--candidate "ema 0.999:ema_decay=0.999" --candidate "ema 0.9995:ema_decay=0.9995" --no-parallel-check': (
        "four whole trials (about 11 minutes on these cores); its --quick mode runs in tests/test_benchmarks.py"
    ),
    '.venv/bin/python benchmarks/frontier.py --only current "no real photos" '
    '--candidate "bn refit:bn_refit_scans=true" --seeds 0 1 --no-parallel-check': (
        "six whole trials (about 10 minutes on these cores); tests/test_benchmarks.py runs --seeds on a small subset"
    ),
    '.venv/bin/python benchmarks/frontier.py --only current "no real photos" --seeds 2 3 --no-parallel-check': (
        "four whole trials (about 6 minutes on these cores); tests/test_benchmarks.py runs --seeds on a small subset"
    ),
    ".venv/bin/python benchmarks/frontier.py --only current "
    '--candidate "as filed:real_photo_share=0,stroke_share=0" --seeds 0 1 2 3 --no-parallel-check': (
        "eight whole trials (about 12 minutes on these cores); tests/test_benchmarks.py runs --seeds on a small subset"
    ),
    '.venv/bin/python benchmarks/frontier.py --candidate "16 epochs:epochs=16" --candidate "17 epochs:epochs=17" '
    "--seeds 0 1 2 3 --no-parallel-check": (
        "eight whole trials (about 11 minutes on these cores); tests/test_benchmarks.py runs --seeds on a small subset"
    ),
    ".venv/bin/python benchmarks/score_throughput.py --end-to-end 100000 --folder ~/catalogue-100k --render-only": LONG_BENCHMARK,  # noqa: E501 - a documented command, verbatim
    ".venv/bin/python benchmarks/score_throughput.py --end-to-end 100000 --folder ~/catalogue-100k --json e2e.json": LONG_BENCHMARK,  # noqa: E501 - a documented command, verbatim
    ".venv/bin/python benchmarks/serve_faults.py --service-root /tmp/before --run FashionFlow/<id>": "needs a second "
    "checkout to compare against; its --quick mode runs in tests/test_benchmarks.py",
    ".venv/bin/python benchmarks/serve_faults.py --run FashionFlow/1796347748851747 --only hostile --only formats "
    "--service-root /tmp/before": "needs a second checkout and that run; its --quick mode runs in "
    "tests/test_benchmarks.py",
    "python flows/score_flow.py run --input photos.txt --run FashionFlow/<run-id> --output scores/ --format csv": "a whole ScoreFlow run; tests/flows/test_score_flow.py runs one with --run and --output",  # noqa: E501 - a documented command, verbatim
    "python flows/score_flow.py --config config configs/score/batch.yaml run --input s3://<bucket>/photos/ "
    "--output s3://<bucket>/scores/": CLOUD,
    "python flows/score_flow.py resume": "needs a failed run; tests/flows/test_score_flow.py resumes one",
    "python flows/fashion_flow.py --config config configs/batch.yaml run": CLOUD,
    "python flows/fashion_flow.py resume": "needs a failed run; tests/flows/test_fashion_flow.py resumes one",
    "python flows/fashion_flow.py --config config configs/batch.yaml step-functions create": CLOUD,
    "python flows/fashion_flow.py step-functions trigger": CLOUD,
    "python flows/fashion_flow.py --config config configs/kubernetes.yaml argo-workflows create": CLOUD,
    "python flows/fashion_flow.py argo-workflows trigger": CLOUD,
    "python flows/promote_flow.py argo-workflows create": CLOUD,
    "python flows/fashion_flow.py --config config configs/kubernetes.yaml run": CLOUD,
    "python flows/fashion_flow.py resume --origin-run-id argo-fashionflow-<id>": CLOUD,
    "python flows/promote_flow.py run": "judges the latest run and may move the production tag: "
    "tests/test_promotion.py runs PromoteFlow with its own tags",
    "python flows/promote_flow.py run --candidate FashionFlow/<run-id>": "tests/test_promotion.py runs it",
    "python flows/promote_flow.py --trigger FashionFlow/<run-id> run": "as the deployed trigger starts it; "
    "tests/test_promotion.py runs PromoteFlow",
    "python flows/promote_flow.py --config rules my-rules.yaml run": "tests/test_promotion.py runs it with its own rules",  # noqa: E501 - a documented command, verbatim
    "python flows/promote_flow.py card view <run-id>/decide": "needs a PromoteFlow run: tests/test_promotion.py runs "
    "the card command PromoteFlow prints",
    "python flows/promote_flow.py run --candidate FashionFlow/<earlier-run-id> --rollback true": "moves the production "
    "tag; tests/test_promotion.py rolls back with its own tag",
    "fmnist-serve": "serves the latest run on port 8000; run below with --run",
    "fmnist-serve --help": "the help every documented fmnist-serve line's flags are checked against here",
    "fmnist predict shoe.jpg shirt.png": "tests/serving/test_predict_files.py runs it on real files and the smoke run",
    "fmnist predict photos/ --tag production --json": "tests/serving/test_predict_files.py runs it on a folder with "
    "--run and --json",
    "fmnist-serve --tag production --host 0.0.0.0 --port 8080 --workers 2": "binds every interface; the same service "
    "as the --run line below; tests/serving/test_serving_faults.py runs several workers",
}


def documented_commands() -> list[tuple[str, str]]:
    """(where, command) for every repository command in a fenced shell block, comments stripped, continuation
    lines joined."""
    found = []
    for doc in DOCS:
        in_block, lang, pending = False, "", ""
        for number, line in enumerate(doc.read_text().splitlines(), start=1):
            if line.strip().startswith("```"):
                in_block, lang = not in_block, line.strip()[3:].strip()
                continue
            if not in_block or lang not in {"bash", "sh", "shell", "console"}:
                continue
            text = pending + line.strip()
            if text.endswith("\\"):
                pending = text[:-1] + " "
                continue
            pending = ""
            command = re.split(r"\s+#\s", text, maxsplit=1)[0].strip()
            if COMMAND.match(command):
                found.append((f"{doc.relative_to(ROOT)}:{number}", re.sub(r"\s+", " ", command)))
    return found


def test_every_documented_command_is_run_or_skipped_with_a_reason():
    documented = {command for _, command in documented_commands()}
    unlisted = sorted(
        f"{where}: {command}" for where, command in documented_commands() if command not in RUN | set(SKIPPED)
    )
    assert not unlisted, "documented but neither run nor skipped:\n" + "\n".join(unlisted)
    stale = sorted((RUN | set(SKIPPED)) - documented)
    assert not stale, "listed here but no longer documented:\n" + "\n".join(stale)
    assert RUN.isdisjoint(SKIPPED)


# --------------------------------------------------------------------------------------------- flags and targets
@cache
def help_text(*command: str) -> str:
    """The help a command prints (`... --help`)."""
    result = subprocess.run(
        [*command, "--help"], cwd=ROOT, env=shell_without_user() | {"USERNAME": "docs"}, capture_output=True, text=True
    )
    assert result.returncode == 0, f"{' '.join(command)} --help: {result.stderr[-1500:]}"
    return result.stdout + result.stderr


# Metaflow's top-level options and how many values each takes (others: one).
TOP_LEVEL_ARITY = {"--config": 2, "--config-value": 2, "--quiet": 0}
SUBCOMMAND_GROUPS = {"card", "step-functions", "argo-workflows"}


def _words(command: str) -> list[str]:
    return [w for w in shlex.split(command.replace("[", " ").replace("]", " ")) if w != "..."]


def _check_flags(flags: list[str], text: str, what: str) -> None:
    for flag in flags:
        name = flag.split("=")[0]
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text), f"{what} has no {name}"


@pytest.mark.parametrize("where_command", documented_commands(), ids=lambda wc: wc[1][:60])
def test_documented_flags_and_targets_exist(where_command):
    check_command(*where_command)


def test_the_cli_hints_name_commands_that_exist():
    """What the service's CLI and ScoreFlow tell a user to type when there is no model to use: the make target and
    the flag exist. (PromoteFlow's refusal prints its card command, run in tests/test_promotion.py.)"""
    from score_runs import ModelRunError, find_model_run

    from serving.cli import missing_model
    from serving.settings import Settings

    served = missing_model(Settings(tag="no-run-carries-this-tag"))
    assert served is not None and "`make run`" in served
    check_command("fmnist-serve's hint", "make run")
    with pytest.raises(ModelRunError) as refused:
        find_model_run("", "no-run-carries-this-tag")
    hint = re.search(r"name one with (--run \S+)", str(refused.value))
    assert hint, str(refused.value)
    check_command("ScoreFlow's hint", f"python flows/score_flow.py run {hint.group(1)}")


def check_command(where: str, command: str) -> None:
    """Every make target and variable, and every flag, of `command` exists in the Makefile or the command's help."""
    words = _words(command)
    if words[0] == "make":
        makefile = (ROOT / "Makefile").read_text()
        targets = [w for w in words[1:] if "=" not in w]
        variables = [w.split("=")[0] for w in words[1:] if "=" in w]
        for target in targets:
            assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"{where}: make has no target {target}"
        for variable in variables:
            assert f"$({variable})" in makefile or f"{variable} ?=" in makefile, f"{where}: make ignores {variable}"
        return
    if words[0].endswith("fmnist") and words[1:2] == ["predict"]:
        fmnist = str(Path(sys.executable).with_name("fmnist"))
        _check_flags([w for w in words[2:] if w.startswith("--")], help_text(fmnist, "predict"), f"{where}: fmnist")
        return
    if words[0].endswith("fmnist-serve"):
        serve = str(Path(sys.executable).with_name("fmnist-serve"))
        _check_flags([w for w in words[1:] if w.startswith("--")], help_text(serve), f"{where}: fmnist-serve")
        return
    script, rest = words[1], words[2:]
    if script.startswith("benchmarks/"):
        _check_flags([w for w in rest if w.startswith("--")], help_text(sys.executable, script), f"{where}: {script}")
        return
    top, i = [], 0
    while i < len(rest) and rest[i].startswith("--"):
        top.append(rest[i])
        i += 1 + TOP_LEVEL_ARITY.get(rest[i], 1)
    sub = [rest[i]] if i < len(rest) else []
    if sub and sub[0] in SUBCOMMAND_GROUPS and i + 1 < len(rest):
        sub.append(rest[i + 1])
    options = [w for w in rest[i + len(sub) :] if w.startswith("--")]
    _check_flags(top, help_text(sys.executable, script), f"{where}: {script}")
    assert sub, f"{where}: no Metaflow command in {command}"
    if sub == ["resume"]:
        # `resume --help` looks for the run to resume before it prints help: read the command's own options.
        from metaflow.cli_components.run_cmds import resume

        _check_flags(options, " ".join(o for p in resume.params for o in p.opts), f"{where}: {script} resume")
        return
    _check_flags(options, help_text(sys.executable, script, *sub), f"{where}: {script} {' '.join(sub)}")


# ------------------------------------------------------------------------------------------------ run as written
def _as_written(command: str, run) -> str:
    return command.replace("FashionFlow/<run-id>", run.pathspec).replace("<run-id>", run.id)


def _shell(command: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=shell_without_user() | env, capture_output=True, text=True, timeout=600
    )


CARD_TEXT = {"evaluate": "## Confusion matrix", "join": "## Validation accuracy against the swept hyper-parameters"}


@pytest.mark.parametrize("command", sorted(c for c in RUN if "card" in c))
def test_documented_card_commands_write_the_card(command, smoke_run):
    """Run from the repository root (make) or the run's directory (Metaflow's own command, with the interpreter
    that ran the tests as `python`), as a user's shell without $USER after `make run`."""
    step = "join" if "join" in command else "evaluate"
    written = _as_written(command, smoke_run)
    if written.startswith("make "):
        target = ROOT / "cards" / f"FashionFlow-{smoke_run.id}-{step}.html"
        target.unlink(missing_ok=True)
        # The session's runs are recorded as the user "test": the shell that ran them has $USER=test, from which the
        # Makefile takes USERNAME, as it did for `make run`.
        # Metaflow finds runs and cards in the `.metaflow` folder of the working directory: the repository's after
        # `make run`; the session's runs are in their own datastore, so make runs there with the repository's Makefile.
        cwd = session_datastore()
        target = cwd / "cards" / target.name
        target.unlink(missing_ok=True)
        result = _shell(written.replace("make ", f"make -f {ROOT / 'Makefile'} ", 1), cwd, USER="test")
        assert result.returncode == 0, result.stdout[-1500:] + result.stderr[-1500:]
        assert f"card written to {target.relative_to(cwd)}" in result.stdout
    else:
        cwd = session_datastore()
        written = written.replace("python ", f"USERNAME=test {sys.executable} {ROOT}/", 1).replace(
            " card view ", " card get "
        )
        target = cwd / "leaderboard.html" if written.endswith(".html") else cwd / f"{step}-card.html"
        if not written.endswith(".html"):
            written += f" {target.name}"
        target.unlink(missing_ok=True)
        result = _shell(written, cwd)
        assert result.returncode == 0, result.stdout[-1500:] + result.stderr[-1500:]
    assert CARD_TEXT[step] in card_markdown(target.read_text())


def test_documented_serve_command_serves_the_run(smoke_run):
    """`fmnist-serve --run FashionFlow/<run-id>` starts and becomes ready with that run (its port set through the
    environment, so the command stays as written)."""
    port = free_port()
    command = _as_written("fmnist-serve --run FashionFlow/<run-id>", smoke_run).split()
    serve = str(Path(sys.executable).with_name("fmnist-serve"))
    env = shell_without_user() | {"USERNAME": "test", "FASHIONFLOW_PORT": str(port)}
    process = subprocess.Popen(
        [serve, *command[1:]],
        cwd=session_datastore(),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert process.poll() is None, process.stdout.read()[-2000:] if process.stdout else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        model = httpx.get(f"http://127.0.0.1:{port}/model", timeout=5).json()
        assert model["run"] == smoke_run.pathspec
    finally:
        process.terminate()
        process.wait(timeout=30)
