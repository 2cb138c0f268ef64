"""What every `raytts` command shares: printing failed rows, `--set KEY=VALUE` overrides, paths given as flags."""

from __future__ import annotations

import sys
from pathlib import Path

from actors.settings import resolve_path


def failure_line(failure: dict) -> str:
    """`FAILED <where>: <why>` for one failed row. A row's error already starts with its location (file:line) when
    it came from the input; it is then printed as is, not after its location a second time."""
    error = failure.get("error") or ""
    source, row_id = failure.get("source"), failure.get("id")
    located = not source or error.startswith(f"{source}:")
    if row_id is None:
        return f"FAILED {error}" if located else f"FAILED {source}: {error}"
    return f"FAILED {row_id!r}{'' if located else f' at {source}'}: {error}"


def print_failures(failures: list[dict], report_path: str, shown: int = 20) -> None:
    for failure in failures[:shown]:
        print(failure_line(failure), file=sys.stderr)
    if len(failures) > shown:
        print(f"... and {len(failures) - shown} more failures (see {report_path})", file=sys.stderr)


def overrides_from(command: str, items: list[str]) -> dict | None:
    import yaml

    overrides: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"raytts {command}: --set expects KEY=VALUE, got {item!r}", file=sys.stderr)
            return None
        overrides[key] = yaml.safe_load(value)
    return overrides


def from_cwd(path: str) -> str:
    """A path given as a flag: relative to where the command runs (paths in a YAML are relative to the YAML)."""
    return resolve_path(path, Path.cwd())


def listening_page(output: str) -> None:
    """Write the listening page of an output just written (`raytts report`); one that cannot be written is said,
    not a failed run."""
    from pipeline.listening import write_page

    try:
        page, _ = write_page(output)
    except OSError as err:
        print(f"listening page not written ({err}); `raytts report {output}` writes it", file=sys.stderr)
        return
    print(f"listening page: {page}", file=sys.stderr)
