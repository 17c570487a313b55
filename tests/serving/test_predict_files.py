"""`fmnist predict`, the console script, on real files: the service's answers without a server, bad files named with
the reason and a failing exit status, folders and a list on standard input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.settings import Settings
from tests.support.images import encode, real_test_images

FMNIST = Path(sys.executable).with_name("fmnist")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Five real test images as PNG and JPEG files, in a folder and a subfolder."""
    root = tmp_path_factory.mktemp("catalogue")
    (root / "more").mkdir()
    images, _ = real_test_images(5)
    for i in range(3):
        (root / f"{i}.png").write_bytes(encode(images[i]))
    for i in range(3, 5):
        (root / "more" / f"{i}.jpg").write_bytes(encode(images[i], "JPEG", quality=90))
    return root


def fmnist(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASHIONFLOW_")}
    return subprocess.run([str(FMNIST), *args], input=stdin, capture_output=True, text=True, env=env, timeout=300)


# What a JSON line shares with the service's answer to the same file.
FIELDS = ("class_index", "class_name", "probabilities", "confident", "class_confident", "unsure_reason", "top_k")


def test_a_folder_gets_the_services_answers_as_json_lines(folder, smoke_run):
    result = fmnist("predict", str(folder), "--run", smoke_run.pathspec, "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    assert [a["file"] for a in answers] == [str(p) for p in files]
    with TestClient(create_app(Settings(run=smoke_run.pathspec, device="cpu"))) as client:
        for answer, path in zip(answers, files, strict=True):
            served = client.post("/predict", files={"file": (path.name, path.read_bytes())}).json()
            for field in FIELDS:
                assert answer[field] == served[field], (path, field)


def test_bad_files_are_named_with_the_reason_and_fail_the_exit_status(folder, smoke_run, tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    listed = "\n".join([str(folder / "0.png"), str(tmp_path / "notes.txt"), str(tmp_path / "missing.png")]) + "\n"
    result = fmnist("predict", "-", str(tmp_path / "empty.png"), "--run", smoke_run.id, stdin=listed)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    trust = r"(confident|confident it is \w+, not of the class|unsure: \w+)"
    assert len(lines) == 1 and re.fullmatch(
        rf"{re.escape(str(folder / '0.png'))}: (\S.*) \((0|1)\.\d{{3}}, {trust}\)", lines[0]
    ), lines
    errors = result.stderr
    assert f"{tmp_path / 'notes.txt'}: error: " in errors and "not an image" in errors.lower()
    assert f"{tmp_path / 'missing.png'}: error: No such file or directory" in errors
    assert f"{tmp_path / 'empty.png'}: error: empty file" in errors


def test_without_a_model_it_says_so_and_what_to_do(tmp_path):
    result = fmnist("predict", str(tmp_path), "--tag", "no-run-has-this-tag")
    assert result.returncode == 3 and "no model to use" in result.stderr and "make run" in result.stderr
