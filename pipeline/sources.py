"""Text and reference-speaker shards -> uniform rows, never raising for a bad row.

Every shard is read as bytes (Ray Data `read_binary_files`) and parsed here by extension, so one bad line
becomes one row with `error` instead of failing the read. Rows have a fixed schema:
`id`, `text`, `source` ("file:line"), `fields` (JSON of every other input column) and `error`.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from actors.validation import RequestError, validate_id

from .inputs import parse_json_line

log = logging.getLogger(__name__)

TEXT_EXTENSIONS = (".jsonl", ".json", ".ndjson", ".parquet", ".csv", ".txt")
SPEAKER_EXTENSIONS = (".jsonl", ".json", ".ndjson", ".parquet", ".csv")


def expand_paths(specs: list[str], extensions: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(files, problems): every spec (a file, folder or glob; local, file:// or an object-storage URI) expanded to
    the shard files it names, each file once even when specs overlap. A spec that names nothing readable is a
    problem (reported, the job goes on with the rest), never an exception."""
    files: list[str] = []
    problems: list[str] = []
    for spec in specs:
        if "://" in spec and not spec.startswith("file://"):
            matched, problem = _expand_uri(spec, extensions)
        else:
            matched, problem = _expand_local(spec, extensions)
        if problem:
            problems.append(problem)
        files.extend(matched)
    unique = list(dict.fromkeys(files))  # overlapping specs (a folder and a glob inside it) name a file once
    if len(unique) < len(files):
        log.info("%d shard files were named by more than one input spec; each is read once", len(files) - len(unique))
    return unique, problems


def _expand_local(spec: str, extensions: tuple[str, ...]) -> tuple[list[str], str | None]:
    local = os.path.abspath(spec.removeprefix("file://"))
    kinds = "/".join(extensions)
    if any(ch in local for ch in "*?["):
        matched = sorted(p for p in glob.glob(local, recursive=True) if p.endswith(extensions) and os.path.isfile(p))
        return matched, None if matched else f"{spec}: the glob matches no {kinds} file"
    if os.path.isdir(local):
        matched = sorted(str(p) for p in Path(local).rglob("*") if p.is_file() and p.name.endswith(extensions))
        return matched, None if matched else f"{spec}: the folder holds no {kinds} file"
    if os.path.isfile(local):
        if not local.endswith(extensions):
            return [], f"{spec}: unknown shard format; expected one of {', '.join(extensions)}"
        return [local], None
    return [], f"{spec}: no such file or folder"


def _expand_uri(spec: str, extensions: tuple[str, ...]) -> tuple[list[str], str | None]:
    """An object-storage file, "folder" (key prefix) or glob (`*`, `?`, `[...]` within a path segment, `**` across
    segments), listed through pyarrow's filesystem for the URI's scheme."""
    import pyarrow.fs as pafs

    scheme = spec.split("://", 1)[0]
    kinds = "/".join(extensions)
    pattern = None
    root = spec
    if any(ch in spec.split("://", 1)[1] for ch in "*?["):
        head = re.split(r"[*?\[]", spec, maxsplit=1)[0]
        root = head.rsplit("/", 1)[0]
    try:
        fs, root_path = pafs.FileSystem.from_uri(root)
        if root != spec:
            pattern = _glob_regex(root_path + spec[len(root) :])
        info = fs.get_file_info(root_path)
        if info.type == pafs.FileType.File and pattern is None:
            if not root_path.endswith(extensions):
                return [], f"{spec}: unknown shard format; expected one of {', '.join(extensions)}"
            return [spec], None
        if info.type == pafs.FileType.NotFound and pattern is None:
            return [], f"{spec}: no such object or prefix"
        listed = fs.get_file_info(pafs.FileSelector(root_path, recursive=True, allow_not_found=True))
    except (OSError, pa.ArrowException) as err:
        return [], f"{spec}: cannot list it ({err}); check the URI and the storage credentials of the Ray workers"
    matched = sorted(
        f"{scheme}://{i.path}"
        for i in listed
        if i.type == pafs.FileType.File
        and i.path.endswith(extensions)
        and (pattern is None or pattern.fullmatch(i.path))
    )
    if not matched:
        return [], f"{spec}: the {'glob' if pattern else 'prefix'} matches no {kinds} object"
    return matched, None


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob over '/'-separated keys: `**/` any number of segments, `*` and `?` within one segment."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]*/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2 :]:
            close = pattern.index("]", i + 2)
            body = pattern[i + 1 : close]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = close + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


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


def _parse_csv(path: str, data: bytes) -> list[dict[str, Any]]:
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
    except (pa.ArrowException, OSError) as err:
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
        except (pa.ArrowException, OSError) as err:
            return [_speaker_row(None, path, error=f"{path}: not a readable Parquet file ({err})")]
        records = [(f"{path}:row{i}", r) for i, r in enumerate(table.to_pylist())]
    elif lower.endswith(".csv"):
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
