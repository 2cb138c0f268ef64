"""Build-time check run inside the image: every pin in requirements.txt is what is installed, and torch is the
expected build (CUDA or CPU). Exits 1 with the mismatches so a drifted base image or index fails the build."""

from __future__ import annotations

import re
import sys
from importlib.metadata import PackageNotFoundError, version

PIN = re.compile(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?==(\S+)$")


def main(requirements: str, torch_build: str) -> int:
    problems = []
    for line in open(requirements).read().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = PIN.match(line)
        if match is None:
            problems.append(f"{requirements}: {line!r} is not an exact pin NAME==VERSION")
            continue
        name, _, pinned = match.groups()
        try:
            installed = version(name)
        except PackageNotFoundError:
            problems.append(f"{name}: pinned {pinned}, not installed")
            continue
        if installed.split("+", 1)[0] != pinned:
            problems.append(f"{name}: pinned {pinned}, installed {installed}")

    import torch

    cuda = torch.version.cuda
    if torch_build == "cpu" and cuda is not None:
        problems.append(f"torch {torch.__version__}: expected a CPU build, got CUDA {cuda}")
    if torch_build.startswith("cu"):
        want = f"{torch_build[2:-1]}.{torch_build[-1]}"  # cu130 -> 13.0
        if cuda != want:
            problems.append(f"torch {torch.__version__}: expected CUDA {want} ({torch_build}), got {cuda}")
    for problem in problems:
        print(f"check_pins: {problem}", file=sys.stderr)
    print(f"check_pins: torch {torch.__version__} (CUDA {cuda}), {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
