"""Where the job's books live: an embedded DuckDB database on the driver's local disk, so the driver's memory does not
grow with the job's rows (the database keeps a bounded buffer and spills the rest to its folder).

Tables:
- `inputs`: every parsed input row's identity (block, row in block, id, its case-folded form, source, key, input
  digest, derived id?, unknown fields), loaded from one small Parquet file per parsed block that a Ray task writes
  (`write_block_books`), never through the driver's memory or the object store;
- `fixups`: the identity changes only the whole input decides (`identity_fixups`'s rule: repeated derived ids get
  -2, -3, ...; a repeated id makes the later rows duplicates keyed by their source);
- `books`: the rows' final keys, digests and sources (`inputs` with `fixups` applied), in the one input order
  (block, row); `book_keys`: one entry per key;
- `outputs` / `parts` / `listing`, `plan`, `todo`, `closing`: the output's index (one part at a time), its audio
  files, and the verdicts computed from them (`pipeline.books`).

Which of two rows with one id comes first is decided by (file, line) of their sources (`_FILE`, `_LINE`), never by
the order Ray delivers blocks in.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .identity import duplicate_id_error, error_digest, repeat_id

MEMORY_LIMIT = "128MB"  # the database's buffer: beyond it, tables and joins spill to its folder
BOOKS_FOLDER = "_books"  # {output}/_books/{run}/block-*.parquet: the parsed blocks' identities, removed after the run
BATCH = 65_536  # rows fetched from the database into Python at a time
PARTITION_ROWS = 1_000_000  # rows per key partition of a big join or aggregate: at 96 MB, 10M x 10M keys failed
LEDGER_PREFIX = "raytts-books-"  # {tmp}/raytts-books-{pid}-{random}: a ledger's database folder

INPUT_COLUMNS = pa.schema([
    ("block", pa.int32()), ("row", pa.int32()), ("id", pa.string()), ("folded", pa.string()),
    ("source", pa.string()), ("key", pa.string()), ("input_digest", pa.string()), ("derived", pa.bool_()),
    ("unknown_fields", pa.string()),
])  # fmt: skip

# (file, line) of a source "file:line" / "file:rowN", else (source, 0)
_SOURCE_ORDER = r"^(.*):(?:row)?([0-9]+)$"
_MATCH = f"regexp_full_match(source, '{_SOURCE_ORDER}')"
_FILE = f"CASE WHEN {_MATCH} THEN regexp_extract(source, '{_SOURCE_ORDER}', 1) ELSE source END"
_LINE = f"CASE WHEN {_MATCH} THEN CAST(regexp_extract(source, '{_SOURCE_ORDER}', 2) AS HUGEINT) ELSE 0 END"


def block_books(block: pa.Table, number: int) -> pa.Table:
    """A parsed block's identity columns (`INPUT_COLUMNS`), numbered as the `number`-th block."""
    rows = block.num_rows
    if rows == 0:
        return INPUT_COLUMNS.empty_table()
    ids = block.column("id").cast(pa.string())
    columns = {
        "block": pa.repeat(pa.scalar(number, pa.int32()), rows), "row": pa.array(range(rows), pa.int32()),
        "id": ids, "folded": pc.utf8_lower(ids),
        **{name: block.column(name).cast(INPUT_COLUMNS.field(name).type)
           for name in ("source", "key", "input_digest", "derived", "unknown_fields")},
    }  # fmt: skip
    return pa.table(columns, schema=INPUT_COLUMNS)


def write_block_books(block: pa.Table, number: int, folder: str) -> int:
    """Write a parsed block's identities to `{folder}/block-{number}.parquet` (a Ray task: the driver never holds
    the rows); returns the block's row count."""
    from .parts import filesystem

    books = block_books(block, number)
    if books.num_rows:
        fs, base = filesystem(folder)
        fs.create_dir(base, recursive=True)
        pq.write_table(books, f"{base}/block-{number:07d}.parquet", filesystem=fs)
    return books.num_rows


class Ledger:
    """The books' database (module docstring); `close()` removes it."""

    def __init__(self, memory_limit: str = MEMORY_LIMIT) -> None:
        import duckdb

        _remove_dead_ledgers()
        self.folder = Path(tempfile.mkdtemp(prefix=f"{LEDGER_PREFIX}{os.getpid()}-"))
        config = {"memory_limit": memory_limit, "temp_directory": str(self.folder / "spill"), "threads": 2,
                  "preserve_insertion_order": False}  # fmt: skip
        self.db = duckdb.connect(str(self.folder / "books.duckdb"), config=config)
        self.db.execute(
            "CREATE TABLE inputs (block INTEGER, row INTEGER, id VARCHAR, folded VARCHAR, source VARCHAR, "
            "key VARCHAR, input_digest VARCHAR, derived BOOLEAN, unknown_fields VARCHAR)"
        )
        self.sizes: list[int] = []
        self._removal = weakref.finalize(self, shutil.rmtree, self.folder, True)  # also when never closed

    def close(self) -> None:
        self.db.close()
        self._removal()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def from_books(cls, keys: list[str], digests: list[str], sources: list[str]) -> Ledger:
        """A ledger of rows whose keys and digests are final (no identity rule to apply): tests and benchmarks."""
        ledger = cls()
        rows = len(keys)
        ledger.add(pa.table({
            "block": pa.repeat(pa.scalar(0, pa.int32()), rows), "row": pa.array(range(rows), pa.int32()),
            "id": pa.nulls(rows, pa.string()), "folded": pa.nulls(rows, pa.string()),
            "source": pa.array(sources, pa.string()), "key": pa.array(keys, pa.string()),
            "input_digest": pa.array(digests, pa.string()), "derived": pa.repeat(False, rows),
            "unknown_fields": pa.nulls(rows, pa.string()),
        }, schema=INPUT_COLUMNS))  # fmt: skip
        ledger.sizes = [rows]
        ledger.finish_inputs()
        return ledger

    # ----------------------------------------------------------------------------------------------- loading

    def add(self, table: pa.Table) -> None:
        """Append rows of `INPUT_COLUMNS` (an Arrow table)."""
        self.insert("INSERT INTO inputs SELECT * FROM incoming", table)

    def load_blocks(self, folder: str, sizes: list[int]) -> None:
        """Load the block files `write_block_books` wrote under `folder` (`sizes` rows per block, in order)."""
        from .parts import filesystem

        self.sizes = list(sizes)
        fs, base = filesystem(folder)
        names = [f"{base}/block-{n:07d}.parquet" for n, size in enumerate(sizes) if size]
        if not names:
            return
        if "://" not in folder:  # local: the database reads the files itself, streaming
            self.db.execute("INSERT INTO inputs SELECT * FROM read_parquet(?)", [names])
            return
        for name in names:  # object storage: one block's identities in memory at a time
            self.add(pq.read_table(name, filesystem=fs))

    def finish_inputs(self) -> None:
        """Apply the whole input's identity rule (`fixups`) and make `books`: call once, after every block."""
        self.db.execute("CREATE TABLE fixups (block INTEGER, row INTEGER, source VARCHAR, id VARCHAR, key VARCHAR, "
                        "input_digest VARCHAR, error VARCHAR)")  # fmt: skip
        self._rename_repeats()
        self._mark_duplicates()
        self.db.execute(
            "CREATE TABLE books AS SELECT i.block, i.row, coalesce(f.dup_key, f.any_key, i.key) AS key, "
            "coalesce(f.input_digest, i.input_digest) AS input_digest, i.source FROM inputs i "
            "LEFT JOIN (SELECT block, row, max(key) FILTER (WHERE error IS NOT NULL) AS dup_key, max(key) AS any_key, "
            "max(input_digest) AS input_digest FROM fixups GROUP BY block, row) f USING (block, row)"
        )
        # one entry per key (the first in input order: keys are unique unless an id looks like "@file:line")
        first = "(block::BIGINT << 32) + row"
        self.partitioned("book_keys", lambda part: (
            f"SELECT key, arg_min(input_digest, {first}) AS input_digest, arg_min(source, {first}) AS source "
            f"FROM books WHERE {part('key')} GROUP BY key"
        ))  # fmt: skip

    def _rename_repeats(self) -> None:
        """Rows without an id whose content repeats an earlier such row's get `{id}-2`, `-3`, ... in source order."""
        self.partitioned("repeats", lambda part: (
            f"WITH repeated AS (SELECT id FROM inputs WHERE derived AND {part('id')} GROUP BY id "
            f"HAVING count(*) > 1) SELECT block, row, source, id, occurrence FROM (SELECT block, row, source, id, "
            f"row_number() OVER (PARTITION BY id ORDER BY {_FILE}, {_LINE}, block, row) AS occurrence FROM inputs "
            f"SEMI JOIN repeated USING (id) WHERE derived) WHERE occurrence > 1"
        ))  # fmt: skip
        # the window runs over repeated ids only (usually none): aggregates spill to disk, windows need memory
        for batch in self.batches("SELECT * FROM repeats"):
            new = [
                repeat_id(i, n)
                for i, n in zip(*(batch.column(c).to_pylist() for c in ("id", "occurrence")), strict=True)
            ]
            fixed = pa.table({"block": batch.column("block"), "row": batch.column("row"),
                              "source": batch.column("source"), "id": pa.array(new, pa.string())})  # fmt: skip
            self.insert("INSERT INTO fixups SELECT block, row, source, id, id, NULL, NULL FROM incoming", fixed)

    def _mark_duplicates(self) -> None:
        """A row whose id (after renames; ignoring case: ids name audio files) an earlier row in source order
        already has is a duplicate: its error names the first row, its key is `@source`."""
        self.partitioned("duplicates", lambda part: (
            f"WITH ids AS (SELECT * FROM (SELECT i.block, i.row, i.source, coalesce(f.id, i.id) AS id, "
            f"CASE WHEN f.id IS NULL THEN i.folded ELSE lower(f.id) END AS folded "
            f"FROM inputs i LEFT JOIN fixups f USING (block, row) WHERE coalesce(f.id, i.id) <> '') "
            f"WHERE {part('folded')}), "
            f"repeated AS (SELECT folded FROM ids GROUP BY folded HAVING count(*) > 1), "
            f"ranked AS (SELECT *, {_FILE} AS file, {_LINE} AS line, row_number() OVER w AS n, "
            f"first_value(id) OVER w AS first_id, first_value(source) OVER w AS first_source "
            f"FROM ids SEMI JOIN repeated USING (folded) "
            f"WINDOW w AS (PARTITION BY folded ORDER BY file, line, block, row)) "
            f"SELECT block, row, source, id, first_id, first_source FROM ranked WHERE n > 1"
        ))  # fmt: skip
        # renamed ids are a slug and digits: lower() folds them as Arrow's utf8_lower does
        for batch in self.batches("SELECT * FROM duplicates"):
            errors = [
                duplicate_id_error(*values)
                for values in zip(
                    *(batch.column(c).to_pylist() for c in ("source", "id", "first_id", "first_source")), strict=True
                )
            ]
            fixed = pa.table({
                "block": batch.column("block"), "row": batch.column("row"), "source": batch.column("source"),
                "key": pc.binary_join_element_wise("@", batch.column("source"), ""),
                "input_digest": pa.array([error_digest(e) for e in errors], pa.string()),
                "error": pa.array(errors, pa.string()),
            })  # fmt: skip
            # a renamed row that is also a duplicate gets a second fixups row: `fixups_of` merges them
            self.insert(
                "INSERT INTO fixups SELECT block, row, source, NULL, key, input_digest, error FROM incoming", fixed
            )

    def insert(self, statement: str, table: pa.Table) -> None:
        """Run `statement` (an INSERT) reading the Arrow `table` as `incoming`, on the writer connection (`batches`
        reads on a cursor of its own)."""
        self.db.register("incoming", table)
        self.db.execute(statement)
        self.db.unregister("incoming")

    def partitioned(self, table: str, query: Callable[[Callable[[str], str]], str], parameters: Any = None) -> None:
        """`CREATE OR REPLACE TABLE table AS query`, one key partition at a time: `query(part)` is the statement for
        one partition, where `part(column)` is the predicate keeping that partition's rows of a big table (filter
        every big table of a join by its join key). DuckDB spills one big join to disk, but at a few million rows
        a join's partitions no longer fit a 96 MB buffer; split by key hash, each join is at most ~`PARTITION_ROWS`
        rows a side, so the memory stays the same at any row count."""
        rows = max(self.count, self.value("SELECT count(*) FROM outputs") if self._has("outputs") else 0)
        count = max(1, -(-rows // PARTITION_ROWS))
        for number in range(count):
            part = lambda column: f"coalesce(hash({column}) % {count}, 0) = {number}"  # noqa: E731,B023
            verb = f"CREATE OR REPLACE TABLE {table} AS" if number == 0 else f"INSERT INTO {table}"
            self.db.execute(f"{verb} {query(part)}", parameters)

    def _has(self, table: str) -> bool:
        return bool(self.value("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [table]))

    # ----------------------------------------------------------------------------------------------- reading

    def batches(self, query: str, parameters: list[Any] | None = None) -> Iterator[pa.RecordBatch]:
        """A query's result in batches, read on a cursor of its own (the main connection may write meanwhile)."""
        cursor = self.db.cursor()
        try:
            yield from cursor.sql(query, params=parameters or None).to_arrow_reader(BATCH)
        finally:
            cursor.close()

    def value(self, query: str, parameters: list[Any] | None = None) -> Any:
        row = self.db.execute(query, parameters or []).fetchone()
        return None if row is None else row[0]

    def rows(self, query: str, parameters: list[Any] | None = None) -> list[tuple[Any, ...]]:
        """A query's rows as Python tuples: only for results bounded by something else than the job's rows."""
        return self.db.execute(query, parameters or []).fetchall()

    def column(self, query: str, parameters: list[Any] | None = None) -> pa.ChunkedArray:
        """A one-column query as an Arrow column (for flags: one bit per row)."""
        batches = list(self.batches(query, parameters))
        if not batches:
            return pa.chunked_array([], type=pa.bool_())
        return pa.chunked_array([b.column(0) for b in batches])

    @property
    def count(self) -> int:
        return self.value("SELECT count(*) FROM inputs")

    def fixups_of(self, block: int) -> dict[str, dict[str, str]]:
        """source -> the identity changes of that block's rows (`fixups`), as `pipeline.job.amend_block` takes."""
        found: dict[str, dict[str, str]] = {}
        query = "SELECT source, id, key, input_digest, error FROM fixups WHERE block = ? ORDER BY error IS NOT NULL"
        for source, *values in self.rows(query, [block]):
            entry = found.setdefault(source, {})
            for name, value in zip(("id", "key", "input_digest", "error"), values, strict=True):
                if value is not None:
                    entry[name] = value
        return found

    def blocks_with_fixups(self) -> set[int]:
        return {block for (block,) in self.rows("SELECT DISTINCT block FROM fixups")}

    def all_fixups(self) -> dict[str, dict[str, str]]:
        """Every row's fixups (`identity_fixups`): for small inputs (`raytts synth`, tests)."""
        found: dict[str, dict[str, str]] = {}
        for block in sorted(self.blocks_with_fixups()):
            found.update(self.fixups_of(block))
        return found

    def unknown_field_counts(self) -> dict[str, int]:
        """Rows per input field raytts does not read (bounded by the distinct field names)."""
        query = ("SELECT name, count(*) FROM (SELECT unnest(string_split(unknown_fields, chr(10))) AS name "
                 "FROM inputs WHERE unknown_fields IS NOT NULL) GROUP BY name")  # fmt: skip
        return dict(self.rows(query))

    def has_unread_files(self) -> bool:
        """Whether a shard could not be read or parsed at all (its one error row is keyed by the file, not a
        line): its rows' earlier output must not count as gone."""
        query = r"SELECT count(*) FROM books WHERE key LIKE '@%' AND NOT regexp_matches(key, '^@.*:(row)?\d+$')"
        return bool(self.value(query))


def _remove_dead_ledgers() -> None:
    """Remove the database folders of ledgers whose process is gone (a driver killed by SIGKILL or out of memory
    cannot remove its own; at a million rows one holds ~0.45 GB)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{LEDGER_PREFIX}*-*"):
        pid = folder.name.removeprefix(LEDGER_PREFIX).split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:  # another user's live process
            continue


def identity_fixups(ids: pa.ChunkedArray, sources: pa.ChunkedArray, derived: pa.ChunkedArray) -> dict[str, dict]:
    """source -> the identity changes of the rows that need one, for rows held in memory (`raytts synth`): the
    same rule and the same code as the job's books (`Ledger.finish_inputs`)."""
    ids = ids.cast(pa.string())
    table = pa.table({
        "block": pa.repeat(pa.scalar(0, pa.int32()), len(ids)), "row": pa.array(range(len(ids)), pa.int32()),
        "id": ids, "folded": pc.utf8_lower(ids), "source": sources.cast(pa.string()),
        "key": pa.nulls(len(ids), pa.string()), "input_digest": pa.nulls(len(ids), pa.string()),
        "derived": pc.fill_null(derived.cast(pa.bool_()), False), "unknown_fields": pa.nulls(len(ids), pa.string()),
    }, schema=INPUT_COLUMNS)  # fmt: skip
    with Ledger() as ledger:
        ledger.add(table)
        ledger.finish_inputs()
        return ledger.all_fixups()


def books_folder(output: str) -> str:
    """A fresh folder for this run's block identities under the output (reachable from every node)."""
    return f"{output.rstrip('/')}/{BOOKS_FOLDER}/{uuid.uuid4().hex[:12]}"


def remove_books_folders(output: str) -> None:
    """Remove `{output}/_books` (this run's and any a killed run left): only the lease holder calls this."""
    import pyarrow.fs as pafs

    from .parts import filesystem

    fs, base = filesystem(output.rstrip("/"))
    if fs.get_file_info(f"{base}/{BOOKS_FOLDER}").type != pafs.FileType.NotFound:
        fs.delete_dir(f"{base}/{BOOKS_FOLDER}")
