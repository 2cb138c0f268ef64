"""Input rows: reading text shards line by line and turning raw rows into synthesis requests.

Nothing here raises for a bad row: a row that cannot be read or validated becomes an `InputRow` whose `error`
names the source line and the reason, and flows to the output like any other row.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from actors.validation import RequestError, validate_id

if TYPE_CHECKING:  # torch-free at import: the parse tasks that use this module never load the model
    from actors.engine.sampling import SamplingParams
    from actors.replica import SynthesisRequest

log = logging.getLogger(__name__)

SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens", "min_new_tokens")
KNOWN_FIELDS = {
    "id",
    "text",
    "speaker",
    "seed",
    "prompt",
    "reference_audio",
    "reference_text",
    "reference_codes",
    *SAMPLING_FIELDS,
}


@dataclass
class InputRow:
    source: str  # "file:line"
    id: str | None
    fields: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def read_jsonl(path: str | Path, display_name: str | None = None) -> Iterator[InputRow]:
    """Rows of a JSONL file; blank lines are skipped, every other line yields exactly one row (a leading byte-order
    mark is dropped); a row without an id gets one from the file and line, as in the offline job."""
    name = display_name or str(path)
    stem = safe_stem(name.rsplit("/", 1)[-1], name)
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if number == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            if not raw.strip():
                continue
            yield parse_json_line(raw, f"{name}:{number}", default_id=line_id(stem, number))


# Whole-file compression of a shard (`texts.jsonl.gz`) by suffix, undone by pyarrow's codecs before parsing.
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}


def safe_stem(name: str, path: str) -> str:
    """A shard's name as the stem of the ids its rows get when they have none: its file name without the format
    (and compression) suffix, made file-name safe, and a digest of its path so two `a.jsonl` in different folders
    differ."""
    for suffix in COMPRESSIONS:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", name.rsplit(".", 1)[0]).strip("._-") or "shard"
    return f"{stem[:80]}-{hashlib.sha1(path.encode()).hexdigest()[:6]}"


def line_id(stem: str, number: int) -> str:
    """The id of a row that has none: its shard's stem (`safe_stem`) and its line (or Parquet row) number."""
    return f"{stem}-{number:06d}"


def parse_json_line(raw: bytes, source: str, default_id: str | None = None) -> InputRow:
    """One JSONL line -> a row. A row with no id (absent, null or "") takes `default_id` when given (its file and
    line), else it is an error row."""
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
    if default_id is not None and data.get("id") in (None, ""):
        return InputRow(source, default_id, data)
    try:
        row_id = validate_id(data.get("id"))
    except RequestError as err:
        return InputRow(source, None, data, error=f"{source}: {err}")
    return InputRow(source, row_id, data)


def _unencodable(data: dict[str, Any]) -> str | None:
    """Why a parsed record cannot become UTF-8 text (a lone surrogate escape such as "\\ud800"), or None. One
    encoding of the whole record per row; fields are looked at one by one only to name the bad one."""
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
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
    """The first row with an id wins; later ones get an error naming where the id was first seen."""
    first: dict[str, tuple[str, str]] = {}
    for row in rows:
        if row.error or row.id is None:
            continue
        key = row.id.casefold()  # ids name files: A and a are one file on case-insensitive stores
        if key in first:
            row.error = duplicate_id_error(row.source, row.id, *first[key])
        else:
            first[key] = (row.id, row.source)


def duplicate_id_error(source: str, row_id: str, first_id: str, first_source: str) -> str:
    """The error of a row whose id repeats an earlier row's id, or differs from it only in case (the audio files
    `A.flac` and `a.flac` are one file on case-insensitive stores: macOS and Windows file systems, SMB mounts)."""
    if first_id == row_id:
        return f"{source}: duplicate id {row_id!r} (first seen at {first_source}); ids must be unique"
    return (
        f"{source}: duplicate id {row_id!r}: it differs from id {first_id!r} (first seen at {first_source}) only in "
        f"case, and both would be one audio file on a case-insensitive store; ids must be unique ignoring case"
    )


def to_request(row: InputRow, defaults: SamplingParams, speaker: str | None, normalize: bool) -> SynthesisRequest:
    """Validate field types and build a request; raises RequestError with the row's source in the message."""
    from actors.replica import SynthesisRequest  # the engine's side: torch is loaded there anyway

    data = row.fields
    text = data.get("text")
    if not isinstance(text, str):
        raise RequestError(f"{row.source}: text must be a string, got {type(text).__name__}")
    overrides: dict[str, Any] = {}
    for name in SAMPLING_FIELDS:
        if data.get(name) is not None:
            overrides[name] = _number(
                row, name, data[name], integer=name in ("top_k", "max_new_tokens", "min_new_tokens")
            )
    if data.get("seed") is not None:
        overrides["seed"] = _number(row, "seed", data["seed"], integer=True)
    row_speaker = data.get("speaker") if data.get("speaker") not in (None, "") else speaker  # null/"": the default
    if row_speaker is not None and not isinstance(row_speaker, str):
        raise RequestError(f"{row.source}: speaker must be a string ('seed:N' or a speaker string)")
    params = dataclasses.replace(defaults, **overrides)
    try:
        params.validate(4)
    except ValueError as err:
        raise RequestError(f"{row.source}: {err}") from None
    prompt = data.get("prompt", "[speed_5]")
    if not isinstance(prompt, str):
        raise RequestError(f"{row.source}: prompt must be a string of control tags such as [speed_5]")
    reference_text = data.get("reference_text") or ""
    if not isinstance(reference_text, str):
        raise RequestError(f"{row.source}: reference_text must be a string")
    return SynthesisRequest(
        id=row.id or "",
        text=text,
        speaker=row_speaker,
        reference_text=reference_text,
        params=params,
        normalize=normalize,
        prompt=prompt,
    )


def row_voice(fields: dict[str, Any], default_speaker: str | None, references: dict[str, Any]) -> tuple[Any, str]:
    """(speaker, transcript) a row is synthesised with: the row's speaker (null/"" -> the job's default) and
    reference_text, except that a reference speaker's name (in `references`, when the row carries no
    reference_codes of its own) becomes its encoded codes: no speaker embedding, and its transcript unless the row
    gives one. Shared by the CPU stage that tokenises (the prompt depends on both) and the TTS stage."""
    name = fields.get("speaker") if fields.get("speaker") not in (None, "") else default_speaker
    transcript = fields.get("reference_text") or ""
    if not fields.get("reference_codes") and isinstance(name, str) and name in references:
        entry = references[name]
        return None, transcript or (entry.get("text") or "")
    return name, transcript


def _number(row: InputRow, name: str, value: Any, integer: bool) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError(f"{row.source}: {name} must be a number, got {type(value).__name__} {value!r:.30}")
    if integer:
        if isinstance(value, float) and not value.is_integer():
            raise RequestError(f"{row.source}: {name} must be an integer, got {value}")
        return int(value)
    return float(value)


def unknown_fields(rows: list[InputRow]) -> set[str]:
    return {key for row in rows for key in row.fields if key not in KNOWN_FIELDS}
