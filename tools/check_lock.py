"""Check that the installed environment is exactly requirements-dev.lock and that the lock is complete.

`pip install --no-deps -r requirements-dev.lock` installs nothing the lock does not name, and `pip check` does not
follow extras (ray[serve,data], smart-open[s3]): this walks raytts' requirements with its `test` extra, and every
requested extra of every dependency, through the installed metadata, and fails naming each requirement that the
lock leaves unmet, and each installed version that differs from its pin. Run by `make venv`; exits 1 on a problem.
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

LOCK = Path(__file__).resolve().parents[1] / "requirements-dev.lock"


def lock_pins(path: Path = LOCK) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line)
            if match is None:
                raise SystemExit(f"{path}: {line!r} is not an exact pin NAME==VERSION; regenerate it with make lock")
            pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def problems(lock: Path = LOCK, root: str = "raytts", extras: tuple[str, ...] = ("test",)) -> list[str]:
    pins = lock_pins(lock)
    found: list[str] = []
    seen: set[tuple[str, str]] = set()
    todo = [(root, extra) for extra in ("", *extras)]
    while todo:
        name, extra = todo.pop()
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        for text in distribution(name).requires or []:
            requirement = Requirement(text)
            env = {"extra": extra}
            if requirement.marker is not None and not requirement.marker.evaluate(env):
                continue
            if requirement.marker is None and extra:
                continue  # unconditional requirements are walked with extra ""
            dep = canonicalize_name(requirement.name)
            try:
                installed = distribution(dep).version
            except PackageNotFoundError:
                found.append(f"{name}{f'[{extra}]' if extra else ''} needs {requirement}, which the lock does not pin")
                continue
            if dep not in pins:
                found.append(f"{dep} {installed} is installed but not pinned in {lock.name}")
            if not requirement.specifier.contains(installed, prereleases=True):
                found.append(f"{name} needs {requirement}, installed {dep} {installed}")
            todo.extend((dep, e) for e in ("", *sorted(requirement.extras)))
    for dep, pinned in pins.items():
        try:
            installed = distribution(dep).version
        except PackageNotFoundError:
            found.append(f"{dep}=={pinned} is pinned but not installed")
            continue
        if installed.split("+", 1)[0] != pinned:
            found.append(f"{dep}: pinned {pinned}, installed {installed}")
    return sorted(set(found))


def main() -> int:
    found = problems()
    for problem in found:
        print(f"check_lock: {problem}", file=sys.stderr)
    if found:
        print("check_lock: regenerate the lock with `make lock` (tools/lock.sh), then rebuild .venv", file=sys.stderr)
        return 1
    print(f"check_lock: the environment is exactly {LOCK.name} ({len(lock_pins())} pins), nothing missing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
