"""A task killed outright leaves its local checkpoint folder; the next task on the machine removes it."""

from __future__ import annotations

import os
import subprocess
import sys

from fashion_checkpoints import FOLDER_PREFIX, OWNER_FILE, remove_abandoned_folders


def _folder(root, name, owner):
    folder = root / (FOLDER_PREFIX + name)
    folder.mkdir()
    (folder / "training_state.pt").write_bytes(b"state")
    if owner is not None:
        (folder / OWNER_FILE).write_text(str(owner))
    return folder


def test_only_folders_of_killed_tasks_are_removed(tmp_path):
    task = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    task.kill()  # SIGKILL: no atexit clean-up runs
    task.wait()
    killed = _folder(tmp_path, "killed", task.pid)
    running = _folder(tmp_path, "running", os.getpid())
    unowned = _folder(tmp_path, "unowned", None)  # being created, or an older version's: not ours to judge
    garbled = _folder(tmp_path, "garbled", "not a pid")
    other = tmp_path / "something-else"
    other.mkdir()

    assert remove_abandoned_folders(tmp_path) == [killed]
    assert not killed.exists()
    assert running.exists() and unowned.exists() and garbled.exists() and other.exists()
