"""Reference-speaker manifests (`inputs.speakers`: .jsonl/.csv/.parquet) -> rows {speaker, text, audio_bytes,
audio_path, source, error}, never raising for a bad line: a line that names no usable speaker, or names one without
audio, is an error row naming it. Encoding the audio is `pipeline.speakers`'."""

from __future__ import annotations

import csv
import json
import re
import sys
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .csvrows import csv_records
from .shards import INVALID_UTF8, decode_text, table_records
from .sources import SPEAKER_EXTENSIONS, decompress, not_a_shard, read_shard, shard_format


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
    if fmt == ".parquet":
        try:
            table = pq.read_table(pa.BufferReader(data))
        except (pa.ArrowException, OSError) as err:
            return [_speaker_row(None, path, error=f"{path}: not a readable Parquet file ({err})")]
        records = [
            (f"{path}:row{i}", r if isinstance(r, dict) else {"__error__": r})
            for i, r in enumerate(table_records(table))
        ]
    else:
        records = _csv_records(path, data) if fmt == ".csv" else _json_records(path, data)
    base = path.rsplit("/", 1)[0] if "/" in path else "."
    return [_record_row(source, record, base) for source, record in records]


Record = tuple[str, Any]  # (source, the manifest line as a dict, or {"__error__": why})


def _csv_records(path: str, data: bytes) -> list[Record]:
    csv.field_size_limit(sys.maxsize)
    records: list[Record] = []
    header: list[str] | None = None
    for number, values, error in csv_records(decode_text(data)):
        source = f"{path}:{number}"
        if error or (values and any(INVALID_UTF8 in v for v in values)):
            records.append((source, {"__error__": error or "invalid UTF-8"}))
        elif not values or not any(v.strip() for v in values):
            continue
        elif header is None:
            header = values
        elif len(values) != len(header):
            records.append((source, {"__error__": f"{len(values)} fields, header has {len(header)}"}))
        else:
            records.append((source, dict(zip(header, values, strict=True))))
    return records


def _json_records(path: str, data: bytes) -> list[Record]:
    records: list[Record] = []
    for number, raw in enumerate(data.splitlines(), start=1):
        if raw.strip():
            try:
                records.append((f"{path}:{number}", json.loads(raw.decode("utf-8-sig"))))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                records.append((f"{path}:{number}", {"__error__": f"not valid JSON ({err})"}))
    return records


def _record_row(source: str, record: Any, base: str) -> dict[str, Any]:
    """One manifest line -> a speaker row, or an error row naming what is wrong with it."""
    if not isinstance(record, dict):
        return _speaker_row(None, source, error=f"{source}: expected an object, got {type(record).__name__}")
    if "__error__" in record:
        return _speaker_row(None, source, error=f"{source}: {record['__error__']}")
    name = record.get("speaker")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name):
        return _speaker_row(
            None, source, error=f"{source}: speaker name must be 1-100 chars of [A-Za-z0-9._-], got {name!r}"
        )
    audio = record.get("audio")
    audio_bytes, audio_path = None, None
    if isinstance(audio, dict):
        audio_bytes, audio_path = audio.get("bytes"), audio.get("path")
    elif isinstance(audio, bytes | bytearray):
        audio_bytes = bytes(audio)
    elif isinstance(audio, str) and audio:
        audio_path = audio if "://" in audio or audio.startswith("/") else f"{base}/{audio}"
    if audio_bytes is None and not audio_path:
        return _speaker_row(name, source, error=f"{source}: speaker {name!r} has no audio (file path or bytes)")
    return _speaker_row(name, source, str(record.get("text") or ""), audio_bytes, audio_path)


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
