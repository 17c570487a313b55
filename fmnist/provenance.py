"""Where a model came from: code version, library versions, platform."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

from . import __version__

LIBRARIES = ("torch", "torchvision", "numpy", "metaflow", "pydantic", "safetensors")


def code_version() -> str:
    """The git commit of the working tree ('+dirty' when it has changes), else the package version."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
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


def environment() -> dict[str, object]:
    """Code version, library versions and platform, recorded at the start of a run."""
    return {"code_version": code_version(), "libraries": library_versions(), "platform": platform.platform()}
