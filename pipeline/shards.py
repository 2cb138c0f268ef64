"""Text shards -> uniform rows, never raising for a bad row.

Every shard is read as bytes (`pipeline.sources.read_shard`, in a Ray Data task) and parsed here by extension, so one
bad line becomes one row with `error` instead of failing the read. Rows have a fixed schema: `id`, `text`, `source`
("file:line"), `fields` (JSON of every other input column), `error`, and the row's identity across runs
(`pipeline.identity`): `key` (its id, or `@source` without a usable one), `input_digest` (what the row says about its
audio) and `derived` (its id was derived from its content: it had none); `unknown_fields` names the fields no
part of raytts reads (a typo such as `temprature` would otherwise change nothing, silently). Speaker manifests are
`pipeline.speaker_shards`'.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from actors.requests import KNOWN_FIELDS
from actors.validation import RequestError, validate_id

from .csvrows import csv_records
from .identity import derived_id, error_digest, input_digest
from .inputs import parse_json_line
from .sources import TEXT_EXTENSIONS, decompress, not_a_shard, read_shard, shard_format

log = logging.getLogger(__name__)

PARSED_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("source", pa.string()),
        ("fields", pa.string()),
        ("error", pa.string()),
        ("key", pa.string()),
        ("input_digest", pa.string()),
        ("derived", pa.bool_()),
        ("unknown_fields", pa.string()),  # the row's fields raytts does not read, one per line (null: none)
    ]
)


_FIELDS = json.JSONEncoder(ensure_ascii=False, default=str)  # one encoder for every row (json.dumps makes one a call)


@dataclass(frozen=True)
class RowContext:
    """What a row's input digest needs besides the row (`pipeline.identity.input_digest`): the job's reference
    speakers' digests and its default speaker."""

    speaker_digests: dict[str, str] = field(default_factory=dict)
    default_speaker: str | None = None


def _row(
    row_id: str | None,
    text: Any,
    source: str,
    fields: dict[str, Any] | None = None,
    error: str | None = None,
    context: RowContext | None = None,
    derived: bool = False,
) -> dict[str, Any]:
    """One parsed row: its columns, its key (its id, or `@source` without one) and its input digest."""
    extra = {k: v for k, v in (fields or {}).items() if k not in ("id", "text")}
    unknown = "\n".join(sorted(str(k) for k in extra if k not in KNOWN_FIELDS)) or None
    try:
        encoded = _FIELDS.encode(extra)
    except (TypeError, ValueError) as err:
        encoded, error = "{}", error or f"{source}: fields could not be encoded ({err})"
    if text is not None and not isinstance(text, str):
        error = error or f"{source}: text must be a string, got {type(text).__name__}"
        text = None
    if error is not None:
        digest = error_digest(error)
    else:
        context = context or RowContext()
        digest = input_digest(text, extra, context.speaker_digests, context.default_speaker)
    return {
        "id": row_id,
        "text": text,
        "source": source,
        "fields": encoded,
        "error": error,
        "key": row_id if row_id else f"@{source}",
        "input_digest": digest,
        "derived": derived and row_id is not None,
        "unknown_fields": unknown,
    }


def _record_row(record: dict[str, Any], source: str, context: RowContext | None) -> dict[str, Any]:
    """A row from a record's fields: its id validated, or derived from its content when it has none."""
    value, text = record.get("id"), record.get("text")
    if value is None or value == "":
        return _row(derived_id(text, record), text, source, record, context=context, derived=True)
    try:
        return _row(validate_id(value), text, source, record, context=context)
    except RequestError as err:
        return _row(None, text, source, record, f"{source}: {err}", context)


def read_text_shard(path: str, name: str | None = None, context: RowContext | None = None) -> list[dict[str, Any]]:
    """Read and parse one text shard; `name` is how its rows' sources name it (default: its path). A file gone or
    unreadable since it was listed is one error row: the job goes on."""
    try:
        data = read_shard(path)
    except OSError as err:
        return [_row(None, None, name or path, error=str(err))]
    return parse_text_shard(name or path, data, context)


def parse_text_shard(path: str, data: bytes, context: RowContext | None = None) -> list[dict[str, Any]]:
    """One shard's bytes -> rows. Unknown formats and unreadable files become a single error row. Rows without an
    id get one derived from their content (as every .txt line does): stable when lines are inserted elsewhere or
    the shard is renamed or moved."""
    fmt = shard_format(path, TEXT_EXTENSIONS)
    if fmt is None:
        return [_row(None, None, path, error=not_a_shard(path, TEXT_EXTENSIONS))]
    try:
        data = decompress(path, data)
    except ValueError as err:
        return [_row(None, None, path, error=str(err))]
    if fmt in (".jsonl", ".json", ".ndjson"):
        rows = []
        for number, raw in enumerate(data.removeprefix(_BOM).splitlines(), start=1):
            if not raw.strip():
                continue
            parsed = parse_json_line(raw, f"{path}:{number}", derive_id=True)
            text = parsed.fields.get("text") if parsed.fields else None
            rows.append(_row(parsed.id, text, parsed.source, parsed.fields, parsed.error, context, parsed.derived))
        return rows
    if fmt == ".txt":
        rows = []
        for number, raw in enumerate(data.removeprefix(_BOM).splitlines(), start=1):
            source = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                rows.append(_row(None, None, source, error=f"{source}: invalid UTF-8 at byte {err.start}"))
                continue
            if line.strip():
                rows.append(_record_row({"text": line.strip()}, source, context))
        return rows
    if fmt == ".csv":
        return _parse_csv(path, data, context)
    return _parse_parquet(path, data, context)


_BOM = b"\xef\xbb\xbf"
INVALID_UTF8 = "\x00INVALID-UTF8\x00"


def decode_text(data: bytes) -> str:
    """UTF-8 (a leading byte-order mark is dropped, as spreadsheet exports add one); a file with invalid bytes is
    decoded line by line so one bad line does not take the file down: bad lines carry a marker the parser reports."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    lines = []
    for raw in data.removeprefix(_BOM).splitlines(keepends=True):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            lines.append(INVALID_UTF8 + "\n")
    return "".join(lines)


_NUMERIC_FIELDS = ("seed", "top_k", "max_new_tokens", "min_new_tokens", "temperature", "top_p", "repetition_penalty")


def _parse_csv(path: str, data: bytes, context: RowContext | None) -> list[dict[str, Any]]:
    csv.field_size_limit(sys.maxsize)  # long texts fail per row (max_chars), not by killing the shard's parse
    records = csv_records(decode_text(data))
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
        if any(INVALID_UTF8 in v for v in values):
            rows.append(_row(None, None, source, error=f"{source}: invalid UTF-8"))
            continue
        if len(values) != len(header):
            rows.append(_row(None, None, source, error=f"{source}: {len(values)} fields, header has {len(header)}"))
            continue
        fields: dict[str, Any] = dict(zip(header, values, strict=True))
        for key in _NUMERIC_FIELDS:
            if fields.get(key, "") != "":
                fields[key] = _numeric(fields[key])
        rows.append(_record_row({k: v for k, v in fields.items() if v != ""}, source, context))
    return rows


def _numeric(value: str) -> Any:
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return value  # left as a string: validation reports the wrong type


def _parse_parquet(path: str, data: bytes, context: RowContext | None) -> list[dict[str, Any]]:
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as err:
        return [_row(None, None, path, error=f"{path}: not a readable Parquet file ({err})")]
    if "text" not in table.column_names:
        return [_row(None, None, path, error=f"{path}: Parquet columns {table.column_names} have no 'text'")]
    rows = []
    for index, record in enumerate(table_records(table)):
        source = f"{path}:row{index}"
        if isinstance(record, str):  # a value that cannot be decoded: this record alone fails
            rows.append(_row(None, None, source, error=f"{source}: {record}"))
            continue
        rows.append(_record_row(record, source, context))
    return rows


def table_records(table: pa.Table) -> Iterator[dict[str, Any] | str]:
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
