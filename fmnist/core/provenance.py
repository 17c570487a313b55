"""Where a model came from: code version, library versions, the dependency lock, platform."""

from __future__ import annotations

import hashlib
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path

from fmnist import __version__

LIBRARIES = ("torch", "torchvision", "numpy", "metaflow", "pydantic", "safetensors")
ROOT = Path(__file__).resolve().parents[2]
# The hashed lock of every dependency (`make lock`); an installed wheel or a remote task's code package has none.
LOCK_FILE = ROOT / "requirements" / "lock.txt"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.MULTILINE)


def code_version() -> str:
    """The git commit of the working tree ('+dirty' when it has changes), else the package version."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return f"fmnist {__version__}"


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries a result depends on."""
    versions = {"python": platform.python_version(), "fmnist": __version__}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def lock_digest(path: Path = LOCK_FILE) -> str:
    """'sha256:<hex>' of the dependency lock file, the name of the locked environment; 'unknown' without one."""
    try:
        return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return "unknown"


def locked_versions(path: Path = LOCK_FILE) -> dict[str, str]:
    """Package name (lower case, '-' for '_' and '.') to the version the lock pins; empty without a lock."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in _PIN.findall(text)}


def lock_mismatches(libraries: dict[str, str], path: Path = LOCK_FILE) -> list[str]:
    """The recorded libraries whose installed version is not the locked one, e.g. after a bare `pip install -e .`.

    A local version label is ignored: torch 2.14.1+cpu (the serve image's CPU build) is the locked 2.14.1.
    """
    locked = locked_versions(path)
    return [
        f"{name} {installed} (locked {locked[name]})"
        for name, installed in sorted(libraries.items())
        if name in locked and installed.split("+", 1)[0] != locked[name].split("+", 1)[0]
    ]


def environment() -> dict[str, object]:
    """Code version, library versions, dependency lock and platform, recorded at the start of a run.

    `lock_digest` names the locked environment (requirements/lock.txt) the run was launched from;
    `lock_mismatches` lists recorded libraries that differ from it (empty when the environment is the lock's).
    """
    libraries = library_versions()
    return {
        "code_version": code_version(),
        "libraries": libraries,
        "lock_digest": lock_digest(),
        "lock_mismatches": lock_mismatches(libraries),
        "platform": platform.platform(),
    }
