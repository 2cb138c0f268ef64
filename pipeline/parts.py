"""The job's output parts: `{output}/parts/part-{digest}.parquet`, one per stored block, named by the rows inside.

A part's name is a digest of its rows' keys and digests (`pipeline.identity`), so a block that Ray Data runs twice (a
store actor that died after writing, a retried engine batch) rewrites the same part instead of adding a second copy
of its rows. Local parts are written to a temporary name and renamed; object-store parts appear whole when their
upload completes. Readers skip anything that is not a `.parquet` file and delete parts that do not parse (a killed
writer), so their rows are redone by the next run. `rewrite_part` keeps some rows of a part (a re-run superseding
the others) by writing the kept rows first and deleting the old part after, so a crash in between leaves a copy the
next run's books remove, never a lost row.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from actors.tts_stage import ENGINE_ACCOUNTING

from .output import SCHEMA, hf_metadata, parquet_options

log = logging.getLogger(__name__)

_RUN_FIELDS = pa.schema(
    [
        *SCHEMA,
        pa.field("key", pa.string()),
        pa.field("input_digest", pa.string()),
        pa.field("job_digest", pa.string()),
        pa.field("audio_size", pa.int64()),  # bytes of the row's audio file as written (null: no file)
        pa.field("worker", pa.string()),
        pa.field("engine_occupancy", pa.float64()),
        pa.field("engine", ENGINE_ACCOUNTING),
    ]
)
RUN_SCHEMA = _RUN_FIELDS.with_metadata(hf_metadata(_RUN_FIELDS))
_WRITE_OPTIONS = parquet_options(RUN_SCHEMA)


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) of a local path, file:// URI or object-store URI."""
    if "://" not in uri or uri.startswith("file://"):
        return pafs.LocalFileSystem(), os.path.abspath(uri.removeprefix("file://"))
    return pafs.FileSystem.from_uri(uri)


def part_name(keys: list[str], digests: list[str | None]) -> str:
    """A part's name: a digest of its rows' keys and input digests. Keys are unique in a job's input, so two blocks
    never share a name unless they hold the same rows: a retried block."""
    rows = sorted(f"{key}\t{digest}" for key, digest in zip(keys, digests, strict=True))
    digest = hashlib.sha256("\n".join(rows).encode("utf-8", "surrogatepass")).hexdigest()[:24]
    return f"part-{digest}.parquet"


def write_part(table: pa.Table, parts: str) -> str:
    """Write one block of output rows under `parts` (a folder or URI); returns the part's path."""
    name = part_name(table.column("key").to_pylist(), table.column("input_digest").to_pylist())
    fs, base = filesystem(parts)
    path = f"{base}/{name}"
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(base, recursive=True)
        temporary = f"{base}/.{uuid.uuid4().hex}.tmp"
        pq.write_table(table, temporary, filesystem=fs, **_WRITE_OPTIONS)
        fs.move(temporary, path)  # atomic rename: readers never see half a part
    else:
        pq.write_table(table, path, filesystem=fs, **_WRITE_OPTIONS)  # the object appears when its upload completes
    return path if "://" not in parts else f"{parts.split('://', 1)[0]}://{path}"


def rewrite_part(output: str, path: str, keep: list[int], sources: dict[int, str]) -> None:
    """Keep rows `keep` (indices) of the part at `path`, with new `sources` for some of them (rows whose shard was
    renamed or moved) and every audio path under today's `{output}/audio/` (an output folder moved since): the kept
    rows are written first, then the old part is deleted, so a crash in between leaves a second copy (which the next
    run's books remove), never a lost row. No row kept: the part is deleted."""
    fs, _ = filesystem(output)
    inner = path.split("://", 1)[1] if "://" in path else path
    if keep:
        table = pq.read_table(inner, filesystem=fs, schema=RUN_SCHEMA).take(keep)
        if sources:
            values = table.column("source").to_pylist()
            for position, index in enumerate(keep):
                values[position] = sources.get(index, values[position])
            table = table.set_column(table.schema.get_field_index("source"), "source", pa.array(values, pa.string()))
        table = _audio_paths_under(table, output)
        written = write_part(table, f"{output.rstrip('/')}/parts")
        if written.split("://", 1)[-1] == inner:
            return  # the same rows under the same name: replaced in place
    fs.delete_file(inner)


def audio_prefix(output: str) -> str:
    """What every audio path of the output's rows starts with (`pipeline.store` writes `{prefix}{id}.{format}`)."""
    return f"{output.rstrip('/')}/audio/"


def _audio_paths_under(table: pa.Table, output: str) -> pa.Table:
    """The table with each audio path's folder replaced by the output's audio folder (file names kept)."""
    audio = table.column("audio").combine_chunks()
    if len(audio) == 0:
        return table
    replacement = audio_prefix(output).replace("\\", "\\\\")
    data, paths = audio.flatten()
    paths = pc.replace_substring_regex(paths, pattern=r"^.*/", replacement=replacement)
    fixed = pa.StructArray.from_arrays([data, paths], fields=list(audio.type), mask=audio.is_null())
    return table.set_column(table.schema.get_field_index("audio"), table.schema.field("audio"), fixed)


def iter_outputs(output: str, columns: list[str], clean: bool = False) -> Iterator[pa.Table]:
    """Readable part files under {output}/parts, one table each (see `iter_parts`)."""
    for _, table in iter_parts(output, columns, clean):
        yield table


def iter_parts(output: str, columns: list[str], clean: bool = False) -> Iterator[tuple[str, pa.Table]]:
    """(path, table) of each readable part file under {output}/parts, so a reader holds one part at a time. With
    `clean` (no writer may be running: the start of a run), unreadable parts and temporaries left by killed writers
    are deleted so their rows are redone."""
    fs, base = filesystem(output)
    for info in sorted(_list_parts(fs, f"{base}/parts"), key=lambda i: i.path):  # one order on every store
        if info.type != pafs.FileType.File:
            continue
        if info.base_name.startswith(".") and info.base_name.endswith(".tmp"):
            if clean:
                fs.delete_file(info.path)  # a local writer killed before its rename
            continue
        if not info.path.endswith(".parquet"):
            continue
        try:
            table = _read_part(fs, info.path, columns)
        except (OSError, pa.ArrowInvalid) as err:
            if clean:
                log.warning("removing unreadable part %s (%s): its rows will be redone", info.path, err)
                fs.delete_file(info.path)
            else:
                log.warning("skipping unreadable part %s (%s); the next run redoes its rows", info.path, err)
            continue
        yield info.path, table


# Columns added after parts were first written: a part from an earlier version reads them as nulls (never as an
# unreadable part, which a clean start would delete and redo).
LATER_COLUMNS = {
    "engine", "spoken_text", "dropped_chars", "key", "input_digest", "job_digest", "error_kind", "audio_size",
    "reading_notes", "qc", "qc_flags", "qc_attempts", "asr_text", "asr_error_rate",
}  # fmt: skip


def _read_part(fs: pafs.FileSystem, path: str, columns: list[str]) -> pa.Table:
    try:
        return pq.read_table(path, filesystem=fs, columns=columns)
    except pa.ArrowInvalid:
        later = [c for c in columns if c in LATER_COLUMNS]
        if not later:
            raise
        table = pq.read_table(path, filesystem=fs, columns=[c for c in columns if c not in LATER_COLUMNS])
        for column in later:
            table = table.append_column(column, pa.nulls(table.num_rows, RUN_SCHEMA.field(column).type))
        return table.select([c.split(".")[-1] for c in columns])


def _list_parts(fs: pafs.FileSystem, parts: str) -> list[pafs.FileInfo]:
    """Everything under the parts folder (none when it does not exist yet). A listing that fails is an error, never
    "no parts": a run that saw no finished rows would redo them all and write every row a second time."""
    try:
        return fs.get_file_info(pafs.FileSelector(parts, recursive=True, allow_not_found=True))
    except (OSError, pa.ArrowException) as err:
        raise OSError(
            f"cannot list the job's finished parts under {parts} ({err}); the job stops rather than redo and duplicate "
            f"rows: check the output location and its credentials, then run again"
        ) from err


def read_outputs(output: str, columns: list[str], clean: bool = False) -> pa.Table:
    """All readable parts under {output}/parts as one table (see `iter_outputs`); a nested column such as
    "audio.path" comes back under its leaf name ("path")."""
    tables = list(iter_outputs(output, columns, clean))
    if not tables:
        return pa.table({c: pa.array([], type=_column_type(c)) for c in columns}).rename_columns(
            [c.split(".")[-1] for c in columns]
        )
    return pa.concat_tables(tables, promote_options="permissive")


def _column_type(column: str) -> pa.DataType:
    """The type of a (possibly nested, 'audio.path') output column."""
    name, _, child = column.partition(".")
    field_type = RUN_SCHEMA.field(name).type
    return field_type.field(child).type if child else field_type
