"""Installed size of what an image installs: the project's base dependencies plus chosen extras, resolved through
the installed packages' own metadata (this virtual environment, installed from the lock), summed from each
package's RECORD.

python benchmarks/install_size.py --extras serve                      # the serve image's set
python benchmarks/install_size.py --extras serve --pyproject old.toml  # the same for another pyproject.toml

torch and its CUDA libraries (nvidia-*, cuda-*, triton) are left out of the total and printed apart: the serve image
installs PyTorch's CPU wheel instead, whose size this environment cannot tell.
"""

from __future__ import annotations

import argparse
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
APART = ("torch", "triton", "nvidia-", "cuda-")


def closure(requirements: list[str]) -> set[str]:
    """Every installed distribution the requirements pull in (markers evaluated for this interpreter)."""
    seen: set[str] = set()
    todo = [(Requirement(r), "") for r in requirements]
    while todo:
        req, extra = todo.pop()
        env = {**default_environment(), "extra": extra}
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        name = canonicalize_name(req.name)
        key = name + "[" + ",".join(sorted(req.extras)) + "]"
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for sub in dist.requires or []:
            sub_req = Requirement(sub)
            if sub_req.marker is None or sub_req.marker.evaluate({**default_environment(), "extra": ""}):
                todo.append((sub_req, ""))
            else:
                for wanted in req.extras:
                    if sub_req.marker.evaluate({**default_environment(), "extra": wanted}):
                        todo.append((sub_req, wanted))
    return {k.split("[")[0] for k in seen}


def installed_bytes(name: str) -> int:
    dist = metadata.distribution(name)
    total = 0
    for file in dist.files or []:
        path = Path(str(dist.locate_file(file)))
        if path.is_file():
            total += path.stat().st_size
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--extras", default="serve", help="comma-separated extras of the project, e.g. serve")
    parser.add_argument("--pyproject", type=Path, default=ROOT / "pyproject.toml")
    args = parser.parse_args()
    project = tomllib.loads(args.pyproject.read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in filter(None, args.extras.split(",")):
        requirements += project["optional-dependencies"][extra]
    names = sorted(closure(requirements))
    sizes = {name: installed_bytes(name) for name in names}
    apart = {n: s for n, s in sizes.items() if n.startswith(APART)}
    counted = {n: s for n, s in sizes.items() if n not in apart}
    for name, size in sorted(counted.items(), key=lambda kv: -kv[1]):
        print(f"{size / 2**20:9.1f} MiB  {name}")
    total = sum(counted.values()) / 2**20
    print(f"{total:9.1f} MiB  total of {len(counted)} packages ({args.pyproject.name}, base + {args.extras})")
    print(f"{sum(apart.values()) / 2**20:9.1f} MiB  apart: {', '.join(sorted(apart))} (CUDA build here)")


if __name__ == "__main__":
    main()
