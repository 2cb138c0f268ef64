"""Text and reference-speaker shards -> uniform rows, never raising for a bad row.

Every shard is read as bytes (`read_shard`, in a Ray Data task per file) and parsed here by extension, so one bad line
becomes one row with `error` instead of failing the read. Rows have a fixed schema:
`id`, `text`, `source` ("file:line"), `fields` (JSON of every other input column) and `error`.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from actors.validation import RequestError, validate_id

from .inputs import COMPRESSIONS, line_id, parse_json_line, safe_stem

log = logging.getLogger(__name__)

TEXT_EXTENSIONS = (".jsonl", ".json", ".ndjson", ".parquet", ".csv", ".txt")
SPEAKER_EXTENSIONS = (".jsonl", ".json", ".ndjson", ".parquet", ".csv")
# Reference audio that speaker manifests name: in a speakers folder these are the manifests' companions, read
# through them, so listing the folder does not report them as files it does not read.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au", ".caf")


def shard_format(name: str, extensions: tuple[str, ...]) -> str | None:
    """The shard format of a file name (".jsonl", ...), case-insensitive and through a compression suffix
    (`A.JSONL.GZ` -> ".jsonl"); None when it is not one of `extensions`."""
    lower = name.rsplit("/", 1)[-1].lower()
    for suffix in COMPRESSIONS:
        if lower.endswith(suffix):
            lower = lower[: -len(suffix)]
            break
    return next((ext for ext in extensions if lower.endswith(ext)), None)


def _not_a_shard(path: str, extensions: tuple[str, ...]) -> str:
    return (
        f"{path}: not read: unknown shard format; expected one of {', '.join(extensions)} (any case, optionally "
        f"compressed as {'/'.join(COMPRESSIONS)}); move it out of the input or rename it"
    )


def read_shard(path: str) -> bytes:
    """A shard file's bytes as stored (a local path, file:// or object-storage URI): compression is undone by
    `decompress` while parsing, so a corrupt archive fails its file's row, never the read task (Ray Data's own
    file readers decompress by extension and fail the job on a bad archive). Raises OSError naming the file."""
    import pyarrow.fs as pafs

    try:
        if "://" in path and not path.startswith("file://"):
            fs, inner = pafs.FileSystem.from_uri(path)
        else:
            fs, inner = pafs.LocalFileSystem(), path.removeprefix("file://")
        with fs.open_input_stream(inner, compression=None) as stream:
            return stream.read()
    except (OSError, pa.ArrowException) as err:
        raise OSError(f"{path}: cannot read it ({err}); check that it exists and the Ray workers may read it") from err


def decompress(path: str, data: bytes) -> bytes:
    """A shard's bytes with its whole-file compression (by suffix) undone; raises ValueError naming the file."""
    codec = next((c for suffix, c in COMPRESSIONS.items() if path.lower().endswith(suffix)), None)
    if codec is None:
        return data
    try:
        with pa.CompressedInputStream(pa.BufferReader(data), codec) as stream:
            return stream.read()
    except (pa.ArrowException, OSError) as err:
        raise ValueError(f"{path}: not readable as {codec} ({err})") from err


def expand_paths(
    specs: list[str], extensions: tuple[str, ...], companions: tuple[str, ...] = ()
) -> tuple[list[str], list[str]]:
    """(files, problems): every spec (a file, folder or glob; local, file:// or an object-storage URI) expanded to
    the shard files it names, each file once even when specs overlap. A spec that names nothing readable is a
    problem (reported, the job goes on with the rest), never an exception; so is each file it names that is no
    shard, except `companions` (files with those extensions, e.g. the audio next to speaker manifests)."""
    files: list[str] = []
    problems: list[str] = []
    for spec in specs:
        if "://" in spec and not spec.startswith("file://"):
            matched, found = _expand_uri(spec, extensions, companions)
        else:
            matched, found = _expand_local(spec, extensions, companions)
        problems.extend(p for p in found if p not in problems)  # overlapping specs report a file once
        files.extend(matched)
    # Overlapping specs (a folder and a glob inside it), and local paths that reach one file through symbolic
    # links (a `**` glob over a link loop), name each file once, under its shortest spelling.
    unique = _one_spelling(files)
    if len(unique) < len(files):
        log.info("%d shard files were named more than once; each is read once", len(files) - len(unique))
    return unique, problems


def _one_spelling(paths: list[str]) -> list[str]:
    """Each file once, in order of first appearance, under its shortest spelling (not a/loop/loop/.../x.jsonl)."""
    spellings: dict[str, str] = {}
    for path in paths:
        real = path if "://" in path else os.path.realpath(path)
        if real not in spellings or len(path) < len(spellings[real]):
            spellings[real] = path
    return list(spellings.values())


def _expand_local(spec: str, extensions: tuple[str, ...], companions: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Files a local spec names, and a problem for each file it names that is not a shard (or for no file at all).
    Folders are walked through symbolic links, each real folder once (a link loop ends there)."""
    local = os.path.abspath(spec.removeprefix("file://"))
    kinds = "/".join(extensions)
    if any(ch in local for ch in "*?["):
        found = sorted(_one_spelling([p for p in glob.glob(local, recursive=True) if os.path.isfile(p)]))
        return _split_shards(spec, found, extensions, companions, f"the glob matches no {kinds} file")
    if os.path.isdir(local):
        found, unlisted = _walk(local)
        shards, problems = _split_shards(spec, found, extensions, companions, f"the folder holds no {kinds} file")
        return shards, unlisted + problems
    if os.path.isfile(local):
        if shard_format(local, extensions) is None:
            return [], [_not_a_shard(spec, extensions)]
        return [local], []
    return [], [f"{spec}: no such file or folder"]


def _walk(folder: str) -> tuple[list[str], list[str]]:
    """(files under `folder`, a problem for each sub-folder that could not be listed)."""
    seen: set[tuple[int, int]] = set()
    found: list[str] = []
    unlisted: list[str] = []

    def cannot_list(err: OSError) -> None:
        unlisted.append(f"{err.filename}: not read: cannot list this folder ({err.strerror}); check its permissions")

    for root, dirs, names in os.walk(folder, onerror=cannot_list, followlinks=True):
        stat = os.stat(root)
        if (stat.st_dev, stat.st_ino) in seen:
            dirs[:] = []  # a symbolic link back into a folder already walked
            continue
        seen.add((stat.st_dev, stat.st_ino))
        dirs.sort()
        found.extend(os.path.join(root, n) for n in names if os.path.isfile(os.path.join(root, n)))
    return sorted(found), unlisted


def _split_shards(
    spec: str, found: list[str], extensions: tuple[str, ...], companions: tuple[str, ...], none: str
) -> tuple[list[str], list[str]]:
    shards = [f for f in found if shard_format(f, extensions)]
    others = [f for f in found if not shard_format(f, extensions) and not f.lower().endswith(companions)]
    problems = [_not_a_shard(f, extensions) for f in others]
    if not shards and not problems:
        problems.append(f"{spec}: {none}")
    return shards, problems


def _expand_uri(spec: str, extensions: tuple[str, ...], companions: tuple[str, ...]) -> tuple[list[str], list[str]]:
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
            if shard_format(root_path, extensions) is None:
                return [], [_not_a_shard(spec, extensions)]
            return [spec], []
        if info.type == pafs.FileType.NotFound and pattern is None:
            return [], [f"{spec}: no such object or prefix"]
        listed = fs.get_file_info(pafs.FileSelector(root_path, recursive=True, allow_not_found=True))
    except (OSError, pa.ArrowException) as err:
        return [], [f"{spec}: cannot list it ({err}); check the URI and the storage credentials of the Ray workers"]
    found = sorted(
        f"{scheme}://{i.path}"
        for i in listed
        if i.type == pafs.FileType.File and (pattern is None or pattern.fullmatch(i.path))
    )
    none = f"the {'glob' if pattern else 'prefix'} matches no {kinds} object"
    return _split_shards(spec, found, extensions, companions, none)


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
        return [_row(None, None, path, error=_not_a_shard(path, TEXT_EXTENSIONS))]
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
        return [_speaker_row(None, path, error=_not_a_shard(path, SPEAKER_EXTENSIONS))]
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
