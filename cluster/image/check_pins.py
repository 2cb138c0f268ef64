"""Build-time check run inside the image: every package of the lock is installed at its locked version, and torch is
the variant's build (gpu: the CUDA version of the lock's nvidia-cuda-runtime wheel; cpu: no CUDA). Exits 1 naming
each mismatch, so a base image or index that drifted fails the build instead of shipping.

    python cluster/image/check_pins.py LOCK gpu|cpu
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import PackageNotFoundError, version

PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([^\s\\]+)")


def lock_pins(path: str) -> dict[str, str]:
    """{name: version} of a pip lock written by `uv pip compile --generate-hashes` (hash lines skipped)."""
    pins = {}
    for line in open(path).read().splitlines():
        match = PIN.match(line)
        if match:
            pins[match.group(1)] = match.group(2)
    return pins


def main(lock: str, variant: str) -> int:
    if variant not in ("gpu", "cpu"):
        print(f"check_pins: variant must be gpu or cpu, got {variant!r}", file=sys.stderr)
        return 2
    pins = lock_pins(lock)
    problems = []
    for name, pinned in sorted(pins.items()):
        try:
            installed = version(name)
        except PackageNotFoundError:
            problems.append(f"{name}: locked {pinned}, not installed")
            continue
        if installed != pinned:
            problems.append(f"{name}: locked {pinned}, installed {installed}")

    import torch

    cuda = torch.version.cuda
    if variant == "cpu" and cuda is not None:
        problems.append(f"torch {torch.__version__}: the cpu image needs a CPU build, got CUDA {cuda}")
    if variant == "gpu":
        runtime = pins.get("nvidia-cuda-runtime", "")
        want = ".".join(runtime.split(".")[:2])
        if not runtime:
            problems.append(f"{lock}: the gpu lock pins no nvidia-cuda-runtime wheel (is torch a CUDA build?)")
        elif cuda != want:
            problems.append(
                f"torch {torch.__version__}: expected CUDA {want} (nvidia-cuda-runtime {runtime}), got {cuda}"
            )
    for problem in problems:
        print(f"check_pins: {problem}", file=sys.stderr)
    print(
        f"check_pins: {len(pins)} locked packages, torch {torch.__version__} (CUDA {cuda}), {len(problems)} problem(s)"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
