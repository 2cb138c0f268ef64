"""Request validation shared by the engine and the CPU-only pipeline stages (no torch import here)."""

from __future__ import annotations

import re

_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,199}")  # whole id (fullmatch: `$` would pass "x\n")


class RequestError(ValueError):
    """A request that cannot be synthesised; the message names the problem and the fix."""


def validate_id(value: object) -> str:
    """Row ids become file names downstream: 1-200 chars of [A-Za-z0-9._-], not starting with '.', '-' or '_'."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise RequestError(f"id must be a string or an integer, got {type(value).__name__} {value!r:.40}")
    text = str(value)
    if not _ID_PATTERN.fullmatch(text) or ".." in text:
        raise RequestError(
            f"id {text!r:.60} is not a safe file name: use 1-200 characters of letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit and without '..'"
        )
    return text
