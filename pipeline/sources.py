"""Text and reference-speaker shards -> uniform rows, never raising for a bad row.

Every shard is read as bytes (Ray Data `read_binary_files`) and parsed here by extension, so one bad line
becomes one row with `error` instead of failing the read. Rows have a fixed schema:
`id`, `text`, `source` ("file:line"), `fields` (JSON of every other input column) and `error`.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import os
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from actors.validation import RequestError, validate_id

from .inputs import parse_json_line

TEXT_EXTENSIONS = (".jsonl", ".json", ".ndjson", ".parquet", ".csv", ".txt")
SPEAKER_EXTENSIONS = (".jsonl", ".json", ".ndjson", ".parquet", ".csv")


def expand_paths(specs: list[str], extensions: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(files, problems): local globs and folders expanded; URIs passed through for Ray to list."""
    files: list[str] = []
    problems: list[str] = []
    for spec in specs:
        if "://" in spec and not spec.startswith("file://"):
            files.append(spec)
            continue
        local = spec.removeprefix("file://")
        if any(ch in local for ch in "*?["):
            matched = sorted(
                p for p in glob.glob(local, recursive=True) if p.endswith(extensions) and os.path.isfile(p)
            )
            if not matched:
                problems.append(f"{spec}: the glob matches no {'/'.join(extensions)} file")
            files.extend(matched)
        elif os.path.isdir(local):
            matched = sorted(str(p) for p in Path(local).rglob("*") if p.is_file() and p.name.endswith(extensions))
            if not matched:
                problems.append(f"{spec}: the folder holds no {'/'.join(extensions)} file")
            files.extend(matched)
        elif os.path.isfile(local):
            if not local.endswith(extensions):
                problems.append(f"{spec}: unknown shard format; expected one of {', '.join(extensions)}")
            else:
                files.append(local)
        else:
            problems.append(f"{spec}: no such file or folder")
    return files, problems


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


def _checked_id(value: Any, source: str) -> tuple[str | None, str | None]:
    try:
        return validate_id(value), None
    except RequestError as err:
        return None, f"{source}: {err}"


def parse_text_shard(path: str, data: bytes) -> list[dict[str, Any]]:
    """One shard's bytes -> rows. Unknown formats and unreadable files become a single error row."""
    name = path.rsplit("/", 1)[-1]
    lower = name.lower()
    if lower.endswith((".jsonl", ".json", ".ndjson")):
        rows = []
        for number, raw in enumerate(data.splitlines(), start=1):
            if not raw.strip():
                continue
            parsed = parse_json_line(raw, f"{path}:{number}")
            text = parsed.fields.get("text") if parsed.fields else None
            rows.append(_row(parsed.id, text, parsed.source, parsed.fields, parsed.error))
        return rows
    if lower.endswith(".txt"):
        stem = _safe_stem(name, path)
        rows = []
        for number, raw in enumerate(data.splitlines(), start=1):
            source = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                rows.append(
                    _row(f"{stem}-{number:06d}", None, source, error=f"{source}: invalid UTF-8 at byte {err.start}")
                )
                continue
            if line.strip():
                rows.append(_row(f"{stem}-{number:06d}", line.strip(), source))
        return rows
    if lower.endswith(".csv"):
        return _parse_csv(path, data)
    if lower.endswith(".parquet"):
        return _parse_parquet(path, data)
    return [_row(None, None, path, error=f"{path}: unknown shard format; expected one of {', '.join(TEXT_EXTENSIONS)}")]


def _safe_stem(name: str, path: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", name.rsplit(".", 1)[0]).strip("._-") or "shard"
    return f"{stem[:80]}-{hashlib.sha1(path.encode()).hexdigest()[:6]}"


def _parse_csv(path: str, data: bytes) -> list[dict[str, Any]]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None:
        # Decode line by line so one bad line does not take the file down.
        lines = []
        for raw in data.splitlines(keepends=True):
            try:
                lines.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                lines.append("\x00INVALID-UTF8\x00\n")
        text = "".join(lines)
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        return [_row(None, None, path, error=f"{path}: empty CSV file (expected a header row with id,text)")]
    if "text" not in header:
        return [_row(None, None, path, error=f"{path}: CSV header {header} has no 'text' column")]
    rows = []
    for values in reader:
        number = reader.line_num
        source = f"{path}:{number}"
        if not any(v.strip() for v in values):
            continue
        if any("\x00INVALID-UTF8\x00" in v for v in values):
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
        row_id, error = _checked_id(fields.get("id"), source)
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


def _parse_parquet(path: str, data: bytes) -> list[dict[str, Any]]:
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowInvalid, OSError) as err:
        return [_row(None, None, path, error=f"{path}: not a readable Parquet file ({err})")]
    if "text" not in table.column_names:
        return [_row(None, None, path, error=f"{path}: Parquet columns {table.column_names} have no 'text'")]
    rows = []
    for index, record in enumerate(table.to_pylist()):
        source = f"{path}:row{index}"
        row_id, error = _checked_id(record.get("id"), source)
        rows.append(_row(row_id, record.get("text"), source, record, error))
    return rows


# ----------------------------------------------------------------------------------------------- speakers


def parse_speaker_shard(path: str, data: bytes) -> list[dict[str, Any]]:
    """Reference-speaker manifests -> rows {speaker, text, audio_bytes, audio_path, source, error}."""
    lower = path.lower()
    base = path.rsplit("/", 1)[0] if "/" in path else "."
    records: list[tuple[str, dict[str, Any]]] = []
    if lower.endswith(".parquet"):
        try:
            table = pq.read_table(pa.BufferReader(data))
        except (pa.ArrowInvalid, OSError) as err:
            return [_speaker_row(None, path, error=f"{path}: not a readable Parquet file ({err})")]
        records = [(f"{path}:row{i}", r) for i, r in enumerate(table.to_pylist())]
    elif lower.endswith(".csv"):
        reader = csv.DictReader(io.StringIO(data.decode("utf-8", errors="replace")))
        records = [(f"{path}:{reader.line_num}", dict(r)) for r in reader]
    else:
        for number, raw in enumerate(data.splitlines(), start=1):
            if raw.strip():
                try:
                    records.append((f"{path}:{number}", json.loads(raw.decode("utf-8"))))
                except (UnicodeDecodeError, json.JSONDecodeError) as err:
                    records.append((f"{path}:{number}", {"__error__": f"not valid JSON ({err})"}))
    rows = []
    for source, record in records:
        if not isinstance(record, dict) or "__error__" in record:
            rows.append(_speaker_row(None, source, error=f"{source}: {record.get('__error__', 'expected an object')}"))
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
