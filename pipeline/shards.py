"""Text and reference-speaker shards -> uniform rows, never raising for a bad row.

Every shard is read as bytes (`pipeline.sources.read_shard`, in a Ray Data task) and parsed here by extension, so one
bad line becomes one row with `error` instead of failing the read. Rows have a fixed schema:
`id`, `text`, `source` ("file:line"), `fields` (JSON of every other input column) and `error`.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import sys
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from actors.validation import RequestError, validate_id

from .inputs import line_id, parse_json_line, safe_stem
from .sources import SPEAKER_EXTENSIONS, TEXT_EXTENSIONS, decompress, not_a_shard, read_shard, shard_format

log = logging.getLogger(__name__)


def _row(
    row_id: str | None, text: Any, source: str, fields: dict[str, Any] | None = None, error: str | None = None
) -> dict[str, Any]:
    extra = {k: v for k, v in (fields or {}).items() if k not in ("id", "text")}
    try:
        encoded = json.dumps(extra, ensure_ascii=False, default=str)
    except (TypeError, ValueError) as err:
        encoded, error = "{}", error or f"{source}: fields could not be encoded ({err})"
    if text is not None and not isinstance(text, str):
        error = error or f"{source}: text must be a string, got {type(text).__name__}"
        text = None
    return {"id": row_id, "text": text, "source": source, "fields": encoded, "error": error}


def _checked_id(value: Any, source: str, derived: str | None = None) -> tuple[str | None, str | None]:
    """A row's id, validated; a row with no id (absent, null or "") takes `derived` (its file and line)."""
    if value is None or value == "":
        if derived is not None:
            return derived, None
    try:
        return validate_id(value), None
    except RequestError as err:
        return None, f"{source}: {err}"


def read_text_shard(path: str, name: str | None = None) -> list[dict[str, Any]]:
    """Read and parse one text shard; `name` is how its rows' sources name it (default: its path). A file gone or
    unreadable since it was listed is one error row: the job goes on."""
    try:
        data = read_shard(path)
    except OSError as err:
        return [_row(None, None, name or path, error=str(err))]
    return parse_text_shard(name or path, data)


def parse_text_shard(path: str, data: bytes) -> list[dict[str, Any]]:
    """One shard's bytes -> rows. Unknown formats and unreadable files become a single error row. Rows without an
    id get one from their file and line (as every .txt line does), stable across runs and moved job folders."""
    fmt = shard_format(path, TEXT_EXTENSIONS)
    if fmt is None:
        return [_row(None, None, path, error=not_a_shard(path, TEXT_EXTENSIONS))]
    try:
        data = decompress(path, data)
    except ValueError as err:
        return [_row(None, None, path, error=str(err))]
    stem = safe_stem(path.rsplit("/", 1)[-1], path)
    if fmt in (".jsonl", ".json", ".ndjson"):
        rows = []
        for number, raw in enumerate(data.removeprefix(_BOM).splitlines(), start=1):
            if not raw.strip():
                continue
            parsed = parse_json_line(raw, f"{path}:{number}", default_id=line_id(stem, number))
            text = parsed.fields.get("text") if parsed.fields else None
            rows.append(_row(parsed.id, text, parsed.source, parsed.fields, parsed.error))
        return rows
    if fmt == ".txt":
        rows = []
        for number, raw in enumerate(data.removeprefix(_BOM).splitlines(), start=1):
            source = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                rows.append(
                    _row(line_id(stem, number), None, source, error=f"{source}: invalid UTF-8 at byte {err.start}")
                )
                continue
            if line.strip():
                rows.append(_row(line_id(stem, number), line.strip(), source))
        return rows
    if fmt == ".csv":
        return _parse_csv(path, data, stem)
    return _parse_parquet(path, data, stem)


_BOM = b"\xef\xbb\xbf"


def _decode_text(data: bytes) -> str:
    """UTF-8 (a leading byte-order mark is dropped, as spreadsheet exports add one); a file with invalid bytes is
    decoded line by line so one bad line does not take the file down: bad lines carry a marker the parser reports."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    lines = []
    for raw in data.removeprefix(b"\xef\xbb\xbf").splitlines(keepends=True):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            lines.append(_INVALID_UTF8 + "\n")
    return "".join(lines)


_INVALID_UTF8 = "\x00INVALID-UTF8\x00"


def csv_records(text: str) -> Iterator[tuple[int, list[str] | None, str | None]]:
    """(line, values, error) for each CSV record; `line` is the record's last physical line (its first for a
    malformed record). A malformed record (e.g. an opening quote never closed, which would otherwise swallow every
    later line into one field) becomes one error and parsing resumes on the next line, so no row vanishes."""
    lines = re.split(r"(?<=\n)", text)  # only newlines end lines (str.splitlines also splits at \u2028, \x1c, ...)
    if lines and not lines[-1]:
        lines.pop()
    start = 1  # physical line where the reader (re)starts
    while start <= len(lines):
        reader = csv.reader(iter(lines[start - 1 :]), strict=True)
        consumed = 0
        try:
            for values in reader:
                yield start + reader.line_num - 1, values, None
                consumed = reader.line_num
            return
        except csv.Error as err:
            broken = start + consumed
            yield broken, None, f"malformed CSV record starting on this line ({err}); the lines after it are read on"
            start = broken + 1


def _parse_csv(path: str, data: bytes, stem: str) -> list[dict[str, Any]]:
    csv.field_size_limit(sys.maxsize)  # long texts fail per row (max_chars), not by killing the shard's parse
    records = csv_records(_decode_text(data))
    header: list[str] | None = None
    for number, values, error in records:
        if error:
            return [_row(None, None, path, error=f"{path}:{number}: {error} (the header row cannot be read)")]
        if values:
            header = values
            break
    if header is None:
        return [_row(None, None, path, error=f"{path}: empty CSV file (expected a header row with id,text)")]
    if "text" not in header:
        return [_row(None, None, path, error=f"{path}: CSV header {header} has no 'text' column")]
    rows = []
    for number, values, error in records:
        source = f"{path}:{number}"
        if error:
            rows.append(_row(None, None, source, error=f"{source}: {error}"))
            continue
        if not any(v.strip() for v in values):
            continue
        if any(_INVALID_UTF8 in v for v in values):
            rows.append(_row(None, None, source, error=f"{source}: invalid UTF-8"))
            continue
        if len(values) != len(header):
            rows.append(_row(None, None, source, error=f"{source}: {len(values)} fields, header has {len(header)}"))
            continue
        fields: dict[str, Any] = dict(zip(header, values, strict=True))
        for key in ("seed", "top_k", "max_new_tokens", "min_new_tokens"):
            if fields.get(key, "") != "":
                fields[key] = _numeric(fields[key])
        for key in ("temperature", "top_p", "repetition_penalty"):
            if fields.get(key, "") != "":
                fields[key] = _numeric(fields[key])
        fields = {k: v for k, v in fields.items() if v != ""}
        row_id, error = _checked_id(fields.get("id"), source, line_id(stem, number))
        rows.append(_row(row_id, fields.get("text"), source, fields, error))
    return rows


def _numeric(value: str) -> Any:
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return value  # left as a string: validation reports the wrong type


def _parse_parquet(path: str, data: bytes, stem: str) -> list[dict[str, Any]]:
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as err:
        return [_row(None, None, path, error=f"{path}: not a readable Parquet file ({err})")]
    if "text" not in table.column_names:
        return [_row(None, None, path, error=f"{path}: Parquet columns {table.column_names} have no 'text'")]
    rows = []
    for index, record in enumerate(_records(table)):
        source = f"{path}:row{index}"
        if isinstance(record, str):  # a value that cannot be decoded: this record alone fails
            rows.append(_row(None, None, source, error=f"{source}: {record}"))
            continue
        row_id, error = _checked_id(record.get("id"), source, line_id(stem, index + 1))
        rows.append(_row(row_id, record.get("text"), source, record, error))
    return rows


def _records(table: pa.Table) -> Iterator[dict[str, Any] | str]:
    """Each row as a dict, or the reason it cannot be one (a string column holding invalid UTF-8, which Parquet
    does not check on write): decoded whole, and row by row only when the whole fails."""
    try:
        yield from table.to_pylist()
        return
    except UnicodeDecodeError:
        pass
    for index in range(table.num_rows):
        try:
            yield table.slice(index, 1).to_pylist()[0]
        except UnicodeDecodeError as err:
            yield f"invalid UTF-8 in a string column at byte {err.start}; re-encode the column as UTF-8"


# ----------------------------------------------------------------------------------------------- speakers


def read_speaker_shard(path: str) -> list[dict[str, Any]]:
    """Read and parse one speaker manifest; an unreadable file is one error row."""
    try:
        data = read_shard(path)
    except OSError as err:
        return [_speaker_row(None, path, error=str(err))]
    return parse_speaker_shard(path, data)


def parse_speaker_shard(path: str, data: bytes) -> list[dict[str, Any]]:
    """Reference-speaker manifests -> rows {speaker, text, audio_bytes, audio_path, source, error}."""
    fmt = shard_format(path, SPEAKER_EXTENSIONS)
    if fmt is None:
        return [_speaker_row(None, path, error=not_a_shard(path, SPEAKER_EXTENSIONS))]
    try:
        data = decompress(path, data)
    except ValueError as err:
        return [_speaker_row(None, path, error=str(err))]
    base = path.rsplit("/", 1)[0] if "/" in path else "."
    records: list[tuple[str, dict[str, Any]]] = []
    if fmt == ".parquet":
        try:
            table = pq.read_table(pa.BufferReader(data))
        except (pa.ArrowException, OSError) as err:
            return [_speaker_row(None, path, error=f"{path}: not a readable Parquet file ({err})")]
        records = [
            (f"{path}:row{i}", r if isinstance(r, dict) else {"__error__": r}) for i, r in enumerate(_records(table))
        ]
    elif fmt == ".csv":
        csv.field_size_limit(sys.maxsize)
        header: list[str] | None = None
        for number, values, error in csv_records(_decode_text(data)):
            source = f"{path}:{number}"
            if error or (values and any(_INVALID_UTF8 in v for v in values)):
                records.append((source, {"__error__": error or "invalid UTF-8"}))
            elif not values or not any(v.strip() for v in values):
                continue
            elif header is None:
                header = values
            elif len(values) != len(header):
                records.append((source, {"__error__": f"{len(values)} fields, header has {len(header)}"}))
            else:
                records.append((source, dict(zip(header, values, strict=True))))
    else:
        for number, raw in enumerate(data.splitlines(), start=1):
            if raw.strip():
                try:
                    records.append((f"{path}:{number}", json.loads(raw.decode("utf-8-sig"))))
                except (UnicodeDecodeError, json.JSONDecodeError) as err:
                    records.append((f"{path}:{number}", {"__error__": f"not valid JSON ({err})"}))
    rows = []
    for source, record in records:
        if not isinstance(record, dict):
            rows.append(_speaker_row(None, source, error=f"{source}: expected an object, got {type(record).__name__}"))
            continue
        if "__error__" in record:
            rows.append(_speaker_row(None, source, error=f"{source}: {record['__error__']}"))
            continue
        name = record.get("speaker")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name):
            rows.append(
                _speaker_row(
                    None, source, error=f"{source}: speaker name must be 1-100 chars of [A-Za-z0-9._-], got {name!r}"
                )
            )
            continue
        transcript = record.get("text") or ""
        audio = record.get("audio")
        audio_bytes, audio_path = None, None
        if isinstance(audio, dict):
            audio_bytes, audio_path = audio.get("bytes"), audio.get("path")
        elif isinstance(audio, bytes | bytearray):
            audio_bytes = bytes(audio)
        elif isinstance(audio, str) and audio:
            audio_path = audio if "://" in audio or audio.startswith("/") else f"{base}/{audio}"
        if audio_bytes is None and not audio_path:
            rows.append(
                _speaker_row(name, source, error=f"{source}: speaker {name!r} has no audio (file path or bytes)")
            )
            continue
        rows.append(
            _speaker_row(name, source, transcript=str(transcript), audio_bytes=audio_bytes, audio_path=audio_path)
        )
    return rows


def _speaker_row(name: str | None, source: str, transcript: str = "", audio_bytes: bytes | None = None,
                 audio_path: str | None = None, error: str | None = None) -> dict[str, Any]:  # fmt: skip
    return {
        "speaker": name,
        "text": transcript,
        "audio_bytes": audio_bytes,
        "audio_path": audio_path,
        "source": source,
        "error": error,
    }
