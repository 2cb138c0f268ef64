"""The settings behind each job digest, kept in the output (`{output}/_settings/{job digest}.json`), so a re-run
that redoes rows because the settings changed can say which (`sampling.temperature`, `model_sha256`, ...)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pyarrow as pa

from .identity import changed_settings
from .parts import filesystem

log = logging.getLogger(__name__)


def record_settings(output: str, digest: str, settings: dict[str, Any]) -> None:
    fs, base = filesystem(output)
    fs.create_dir(f"{base}/_settings", recursive=True)
    with fs.open_output_stream(f"{base}/_settings/{digest}.json") as f:
        f.write(json.dumps(settings, indent=1, sort_keys=True, ensure_ascii=False).encode() + b"\n")


def settings_changes(output: str, old_digests: list[str], settings: dict[str, Any]) -> list[str]:
    """The settings that differ between today's and those of the rows redone (unknown when a record is missing)."""
    fs, base = filesystem(output)
    changed: set[str] = set()
    for digest in old_digests:
        try:
            with fs.open_input_stream(f"{base}/_settings/{digest}.json") as f:
                before = json.loads(f.read())
        except (OSError, pa.ArrowException, ValueError) as err:
            log.info("no settings record for job digest %s (%s)", digest, err)
            changed.add(f"unknown (rows from job digest {digest[:12]}, whose settings were not recorded)")
            continue
        changed.update(changed_settings(before, settings))
    return sorted(changed)
