"""Training checkpoints in Metaflow's own datastore (the local folder, or S3 with the batch profile).

A trial's `fmnist.training.checkpoint.CheckpointStore` writes its latest state and the one before it to a local
directory; this module mirrors both files to the task's place in the datastore after every save, and puts them back
before training when the task is a retry, so a trial interrupted on one machine (a reclaimed spot instance) continues on
the next, from the previous state when the latest cannot be read.

Why not Metaflow's `@checkpoint` extension (metaflow-checkpoint): it resolves its scope by reading the run's tags
through the Client API when a task starts, which a Batch container can only do with a metadata service. Under the
local AWS stand-in (moto's S3 and Batch, no metadata service) every Batch task failed with "Run(...) does not
exist" before training, so the checkpoint goes through the datastore the task already writes its artifacts to.

Layout: <datastore root>/<flow>/<run>/<step>/<task>/checkpoint/training_state.pt (the latest) and
training_state.previous.pt, next to the task's own files; attempts of one task share them. The previous file is
uploaded before the latest, so an upload cut short leaves at least one of the two whole in the datastore.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from metaflow import current

from fmnist.training.checkpoint import FILE_NAME, FILE_NAMES, CheckpointStore

log = logging.getLogger(__name__)

# A task's local checkpoint folder is named with this prefix and holds the id of the process it belongs to: a task
# killed outright (SIGKILL, the kernel's out-of-memory killer) never runs its atexit clean-up, so the next task on the
# machine removes the folders whose process is gone.
FOLDER_PREFIX = "fashionflow-checkpoint-"
OWNER_FILE = "owner.pid"


def checkpoint_key(flow_name: str, run_id: str, step_name: str, task_id: str, name: str = FILE_NAME) -> str:
    """Where a task's checkpoint file `name` (the latest by default) lives, relative to the datastore root."""
    return "/".join([flow_name, run_id, step_name, task_id, "checkpoint", name])


def datastore_checkpoints(flow: Any, every: int, on_resume: Any = None) -> CheckpointStore:
    """A CheckpointStore for the running task, mirrored to Metaflow's datastore; restored first on a retry."""
    # The task's own datastore (local or S3), as Metaflow configured it for this task: the same storage, root and
    # credentials its artifacts go to.
    storage = flow._datastore.parent_datastore._storage_impl
    keys = {
        checkpoint_key(current.flow_name, current.run_id, current.step_name, current.task_id, name): name
        for name in FILE_NAMES
    }
    root = Path(tempfile.gettempdir())
    remove_abandoned_folders(root)
    directory = Path(tempfile.mkdtemp(prefix=FOLDER_PREFIX, dir=root))
    (directory / OWNER_FILE).write_text(str(os.getpid()))
    # The datastore holds the copy that counts; the local one goes with the task process.
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    if current.retry_count > 0:
        with storage.load_bytes(list(keys)) as loaded:
            for key, path, _ in loaded:
                if path is not None:
                    shutil.copyfile(path, directory / keys[key])
                    log.info("attempt %d: restored the checkpoint file %s", current.retry_count, key)

    def upload(epoch: int) -> None:
        # Previous first (FILE_NAMES is newest first): while the datastore's latest file is being replaced, its
        # previous file already holds the state saved before, whole.
        for key, name in reversed(keys.items()):
            if (directory / name).exists():
                with open(directory / name, "rb") as state:
                    storage.save_bytes(iter([(key, state)]), overwrite=True)
        log.info("checkpoint after epoch %d saved to the datastore (%s)", epoch, next(iter(keys)))

    return CheckpointStore(directory, every=every, on_save=upload, on_resume=on_resume)


def remove_abandoned_folders(root: Path) -> list[Path]:
    """Remove the local checkpoint folders under `root` whose task process has died without cleaning up; the ones
    removed. A folder without a readable owner (being created, or left by an older version) is left alone."""
    removed = []
    for folder in root.glob(FOLDER_PREFIX + "*"):
        try:
            owner = int((folder / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if not _process_alive(owner):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
            log.info("removed %s, left by task process %d, which is gone", folder, owner)
    return removed


def _process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (signal 0 checks without signalling)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True
