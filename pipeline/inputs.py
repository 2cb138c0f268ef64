"""Input rows: one JSON line into one row, the ids of rows that have none, and duplicate ids (one rule for
`raytts run` and `raytts synth`).

Nothing here raises for a bad row: a row that cannot be read or validated becomes an `InputRow` whose `error`
names the source line and the reason, and flows to the output like any other row. Turning a row's fields into a
synthesis request is `actors.requests.request_from_fields`. Torch-free: the parse tasks import this.
"""

from __future__ import annotations

import difflib
import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from actors.requests import KNOWN_FIELDS
from actors.validation import RequestError, validate_id

from .identity import derived_id
from .ledger import identity_fixups

log = logging.getLogger(__name__)


@dataclass
class InputRow:
    source: str  # "file:line"
    id: str | None
    fields: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    derived: bool = False  # the id was derived from the row's content (it had none)


def read_jsonl(path: str | Path, display_name: str | None = None) -> Iterator[InputRow]:
    """Rows of a JSONL file; blank lines are skipped, every other line yields exactly one row (a leading byte-order
    mark is dropped); a row without an id gets one derived from its content, as in the offline job."""
    name = display_name or str(path)
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if number == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            if not raw.strip():
                continue
            yield parse_json_line(raw, f"{name}:{number}", derive_id=True)


# Whole-file compression of a shard (`texts.jsonl.gz`) by suffix, undone by pyarrow's codecs before parsing.
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}


def parse_json_line(raw: bytes, source: str, derive_id: bool = False) -> InputRow:
    """One JSONL line -> a row. A row with no id (absent, null or "") gets one derived from its content
    (`pipeline.identity.derived_id`) with `derive_id`, else it is an error row."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        salvaged = _salvage_id(raw.decode("utf-8", errors="replace"))
        return InputRow(
            source, salvaged, error=f"{source}: invalid UTF-8 at byte {err.start}; re-encode the file as UTF-8"
        )
    try:
        data = json.loads(line)
    except json.JSONDecodeError as err:
        return InputRow(source, None, error=f"{source}: not valid JSON ({err.msg} at column {err.colno})")
    except RecursionError:
        return InputRow(source, None, error=f"{source}: JSON nested too deeply to read; expected a flat object")
    if not isinstance(data, dict):
        return InputRow(source, None, error=f"{source}: expected a JSON object per line, got {type(data).__name__}")
    unencodable = _unencodable(data)
    if unencodable:  # valid JSON, but no text can hold it: Arrow, files and the tokenizer all need UTF-8
        return InputRow(source, _valid_id(data), error=f"{source}: {unencodable}; fix the escape in the file")
    if derive_id and data.get("id") in (None, ""):
        return InputRow(source, derived_id(data.get("text"), data), data, derived=True)
    try:
        row_id = validate_id(data.get("id"))
    except RequestError as err:
        return InputRow(source, None, data, error=f"{source}: {err}")
    return InputRow(source, row_id, data)


_UTF8_CHECK = json.JSONEncoder(ensure_ascii=False)


def _unencodable(data: dict[str, Any]) -> str | None:
    """Why a parsed record cannot become UTF-8 text (a lone surrogate escape such as "\\ud800"), or None. One
    encoding of the whole record per row; fields are looked at one by one only to name the bad one."""
    try:
        _UTF8_CHECK.encode(data).encode("utf-8")
        return None
    except UnicodeEncodeError:
        pass
    for key, value in data.items():
        try:
            json.dumps({key: value}, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as err:
            return f"field {key!r} is not valid Unicode (unpaired surrogate {err.object[err.start : err.end]!r})"
    return None


def _salvage_id(text: str) -> str | None:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    return _valid_id(data) if isinstance(data, dict) else None


def _valid_id(data: dict[str, Any]) -> str | None:
    """The record's id when it is a valid one, for an error row that should still say which row it is."""
    try:
        return validate_id(data.get("id"))
    except RequestError:
        return None


def mark_duplicates(rows: list[InputRow]) -> None:
    """`pipeline.ledger.identity_fixups` over in-memory rows (`raytts synth`): repeated rows without ids get `-2`, `-3`, ...; later
    rows repeating an id get its error."""
    ids = pa.chunked_array([pa.array([row.id for row in rows], type=pa.string())])
    sources = pa.chunked_array([pa.array([row.source for row in rows], type=pa.string())])
    derived = pa.chunked_array([pa.array([row.derived for row in rows], type=pa.bool_())])
    fixups = identity_fixups(ids, sources, derived)
    for row in rows:
        fix = fixups.get(row.source)
        if fix is not None:
            row.id = fix.get("id", row.id)
            if row.error is None and fix.get("error"):
                row.error = fix["error"]


def unknown_fields(rows: list[InputRow]) -> dict[str, int]:
    """How many rows have each field raytts does not read."""
    return dict(Counter(key for row in rows for key in row.fields if key not in KNOWN_FIELDS))


def unknown_fields_note(counts: dict[str, int]) -> str | None:
    """One line naming the input fields no part of raytts reads, how many rows have each, and the known field each
    may be a typo of: they are kept in no column and change nothing, so a misspelt setting must not pass unseen."""
    if not counts:
        return None
    named = []
    for name, rows in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:10]:
        close = difflib.get_close_matches(name, sorted(KNOWN_FIELDS), n=1, cutoff=0.75)
        hint = f", did you mean {close[0]!r}?" if close else ""
        named.append(f"{name!r} ({rows} rows{hint})")
    more = f" and {len(counts) - 10} more" if len(counts) > 10 else ""
    return (
        f"input fields raytts does not read were ignored: {', '.join(named)}{more}; the fields it reads are "
        f"{', '.join(sorted(KNOWN_FIELDS))}"
    )
