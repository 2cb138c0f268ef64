"""The job's output parts: `{output}/parts/part-{digest}.parquet`, one per stored block, named by the rows inside.

A part's name is a digest of its rows' source lines, so a block that Ray Data runs twice (a store actor that died after
writing, a retried engine batch) rewrites the same part instead of adding a second copy of its rows. Local parts
are written to a temporary name and renamed; object-store parts appear whole when their upload completes. Readers
skip anything that is not a `.parquet` file and delete parts that do not parse (a killed writer), so their rows
are redone by the next run.
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

from .output import SCHEMA, hf_metadata

log = logging.getLogger(__name__)

RUN_SCHEMA = pa.schema(
    [
        *SCHEMA,
        pa.field("source", pa.string()),
        pa.field("worker", pa.string()),
        pa.field("engine_occupancy", pa.float64()),
        pa.field("engine", ENGINE_ACCOUNTING),
    ],
    metadata=hf_metadata(
        {
            "source": {"dtype": "string", "_type": "Value"},
            "worker": {"dtype": "string", "_type": "Value"},
            "engine_occupancy": {"dtype": "float64", "_type": "Value"},
            "engine": {
                field.name: {"dtype": str(field.type).replace("double", "float64"), "_type": "Value"}
                for field in ENGINE_ACCOUNTING
            },
        }
    ),
)


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) of a local path, file:// URI or object-store URI."""
    if "://" not in uri or uri.startswith("file://"):
        return pafs.LocalFileSystem(), os.path.abspath(uri.removeprefix("file://"))
    return pafs.FileSystem.from_uri(uri)


def part_name(sources: list[str]) -> str:
    """A part's name: a digest of its rows' source lines. Each input line is one row with its own source (each file
    is read once), so two blocks never share a name unless they hold the same lines: a retried block. (Ids are no
    name: rows that repeat an id, or blocks of duplicate-id error rows, would overwrite each other's part.)"""
    digest = hashlib.sha256("\n".join(sorted(sources)).encode()).hexdigest()[:24]
    return f"part-{digest}.parquet"


def write_part(table: pa.Table, parts: str) -> str:
    """Write one block of output rows under `parts` (a folder or URI); returns the part's path."""
    sources = table.column("source").cast(pa.string()).to_pylist()
    fs, base = filesystem(parts)
    path = f"{base}/{part_name(sources)}"
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(base, recursive=True)
        temporary = f"{base}/.{uuid.uuid4().hex}.tmp"
        pq.write_table(table, temporary, filesystem=fs)
        fs.move(temporary, path)  # atomic rename: readers never see half a part
    else:
        pq.write_table(table, path, filesystem=fs)  # the object appears when its upload completes
    return path


def key_array(
    ids: pa.Array | pa.ChunkedArray, sources: pa.Array | pa.ChunkedArray, duplicates: pa.Array | None = None
) -> pa.ChunkedArray:
    """Each row's identity across runs, over whole columns (no Python objects per row): its id, or "@" + its source
    line where the id is null or empty or where the source is one of `duplicates` (rows that repeat an earlier
    row's id: the id belongs to the first row, so a finished duplicate never makes the first row count as done)."""
    ids = pa.chunked_array([ids]) if isinstance(ids, pa.Array) else ids
    sources = pa.chunked_array([sources]) if isinstance(sources, pa.Array) else sources
    sources = sources.cast(pa.string())
    ids = ids.cast(pa.string())  # a shard without ids parses to an all-null (type null) column
    has_id = pc.fill_null(pc.not_equal(ids, ""), False)
    if duplicates is not None and len(duplicates):
        has_id = pc.and_(has_id, pc.invert(pc.is_in(sources, value_set=duplicates)))
    return pc.if_else(has_id, ids, pc.binary_join_element_wise("@", sources, ""))


def iter_outputs(output: str, columns: list[str], clean: bool = False) -> Iterator[pa.Table]:
    """Readable part files under {output}/parts, one table each, so a reader holds one part at a time. With `clean`
    (no writer may be running: the start of a run), unreadable parts and temporaries left by killed writers are
    deleted so their rows are redone."""
    fs, base = filesystem(output)
    for info in _list_parts(fs, f"{base}/parts"):
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
        yield table


# Columns added after parts were first written: a part from an earlier version reads them as nulls (never as an
# unreadable part, which a clean start would delete and redo).
LATER_COLUMNS = {"engine", "spoken_text", "dropped_chars"}


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


def drop_failed_rows(output: str) -> int:
    """Remove rows that carry an error from the parts (before a `retry_failed` run redoes them); returns how many.

    Each affected part is deleted before its kept rows are written back under their own digest name, so a crash in
    between loses only output that the next run recomputes, never leaves a row twice.
    """
    fs, base = filesystem(output)
    dropped = 0
    for info in _list_parts(fs, f"{base}/parts"):
        if info.type != pafs.FileType.File or not info.path.endswith(".parquet"):
            continue
        errors = pq.read_table(info.path, filesystem=fs, columns=["error"]).column("error")
        failed = errors.null_count != len(errors)
        if not failed:
            continue
        table = pq.read_table(info.path, filesystem=fs, schema=RUN_SCHEMA)
        kept = table.filter(pc.is_null(table.column("error")))
        fs.delete_file(info.path)
        if kept.num_rows:
            write_part(kept, f"{output.rstrip('/')}/parts")
        dropped += table.num_rows - kept.num_rows
    return dropped
