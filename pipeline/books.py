"""The job's books: which input rows an earlier run already finished, what a re-run must redo or remove, and the
check that the output holds every input row exactly once before a run says `finished`.

A row is finished when the output holds its key once with the same input digest and job digest (`pipeline.identity`)
and, when the output keeps audio files, its file exists. Everything else in the output is superseded before any
synthesis: rows whose input or settings changed (redone), rows whose input line is gone, extra copies, rows written
by an earlier raytts, failed rows with `retry_failed`; finished rows read from a renamed or moved shard only get
their `source` rewritten. So after any sequence of edits and re-runs the output is what a fresh run on today's
inputs would write. The books are tables of the job's DuckDB ledger (`pipeline.ledger`): the driver's memory does
not grow with the rows; Python sees only counts, a few example keys, and one batch of rows at a time.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .audio_files import audio_listing, delete_audio, is_audio_name
from .ledger import BATCH, Ledger
from .parts import audio_prefix, iter_parts, rewrite_part

log = logging.getLogger(__name__)

INDEX_COLUMNS = ["key", "input_digest", "job_digest", "source", "error", "audio.path", "audio_size"]
EXAMPLES = 5  # keys named per category in the report
REASONS = ("new", "changed_input", "changed_settings", "retried", "moved", "relocated", "gone", "repaired")


@dataclass
class Redo:
    """What a run redoes or removes, and why: counts and a few keys per reason (`REASONS`)."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    settings: list[str] = field(default_factory=list)  # the settings whose change redid rows

    def add(self, reason: str, count: int, examples: list[str]) -> None:
        self.counts[reason] += count
        room = EXAMPLES - len(self.examples[reason])
        if room > 0:
            self.examples[reason].extend(examples[:room])

    def to_dict(self) -> dict[str, Any]:
        return {**self.counts, "settings_changed": self.settings,
                "examples": {k: v for k, v in self.examples.items() if v}}  # fmt: skip


@dataclass
class RunPlan:
    """What a run does: `todo` one flag per input row (the ledger's order), what it supersedes (the ledger's `plan`
    table, read a part at a time by `rewrites()` and `deletions()`), and why (`redo`)."""

    ledger: Ledger
    todo: pa.ChunkedArray
    redo: Redo
    old_job_digests: list[str]  # job digests of rows redone because the settings changed

    @property
    def to_synthesise(self) -> int:
        return pc.sum(self.todo).as_py() or 0

    def rewrites(self) -> Iterator[tuple[str, list[int], dict[int, str]]]:
        """(part path, rows kept, new sources of moved rows) for every part that loses a row, has a row to relabel
        or a row whose audio path names another folder (`rewrite_part` puts every kept row's audio under today's
        output), one part at a time."""
        query = (
            "SELECT p.part, p.row, p.taken, p.relabel, p.in_source FROM plan p JOIN (SELECT DISTINCT part FROM plan "
            "WHERE taken OR relabel OR relocated_kept) t USING (part) ORDER BY p.part, p.row"
        )
        paths = dict(self.ledger.rows("SELECT part, path FROM parts"))
        current, keep, sources = None, [], {}
        for batch in self.ledger.batches(query):
            for part, row, taken, relabel, source in zip(*(c.to_pylist() for c in batch.columns), strict=True):
                if part != current:
                    if current is not None:
                        yield paths[current], keep, sources
                    current, keep, sources = part, [], {}
                if not taken:
                    keep.append(row)
                    if relabel:
                        sources[row] = source
        if current is not None:
            yield paths[current], keep, sources

    def deletions(self) -> Iterator[list[str]]:
        """Audio file names of removed ok rows that no kept row uses (an extra copy shares its file with the kept
        row), in batches, sorted."""
        query = (
            "SELECT DISTINCT audio FROM plan WHERE taken AND error IS NULL AND audio IS NOT NULL AND audio_folded NOT "
            "IN (SELECT audio_folded FROM plan WHERE NOT taken AND error IS NULL AND audio IS NOT NULL) ORDER BY audio"
        )
        for batch in self.ledger.batches(query):
            yield batch.column(0).to_pylist()

    @property
    def audio_to_delete(self) -> list[str]:
        return [name for batch in self.deletions() for name in batch]


def load_index(ledger: Ledger, output: str, clean: bool) -> None:
    """The ledger's `outputs` (every output row's key, digests, source, error, audio file name and its case-folded
    form, size, whether its audio path names another folder than today's output, part number and row in the part)
    and `parts` (number, path, rows), read one part at a time."""
    ledger.db.execute("DROP TABLE IF EXISTS outputs; DROP TABLE IF EXISTS parts")
    ledger.db.execute(
        "CREATE TABLE outputs (key VARCHAR, input_digest VARCHAR, job_digest VARCHAR, source VARCHAR, error VARCHAR, "
        "audio_size BIGINT, audio VARCHAR, audio_folded VARCHAR, relocated BOOLEAN, part INTEGER, row BIGINT)"
    )
    ledger.db.execute("CREATE TABLE parts (part INTEGER, path VARCHAR, size BIGINT)")
    prefix = audio_prefix(output)
    pending: list[pa.Table] = []  # parts' index rows not yet inserted: one insert per ~BATCH rows, not per part
    paths = []
    for number, (path, table) in enumerate(iter_parts(output, INDEX_COLUMNS, clean)):
        pending.append(_part_index(table, number, prefix))
        paths.append((number, path, table.num_rows))
        if sum(t.num_rows for t in pending) >= BATCH:
            _insert(ledger, "outputs", pending)
    _insert(ledger, "outputs", pending)
    parts = pa.table({"part": pa.array([p[0] for p in paths], pa.int32()), "path": pa.array([p[1] for p in paths], pa.string()),
                      "size": pa.array([p[2] for p in paths], pa.int64())})  # fmt: skip
    _insert(ledger, "parts", [parts])
    # the first copy in read order of each key with several (a crash mid-rewrite, two old drivers): usually none
    ledger.db.execute(
        "CREATE OR REPLACE TABLE repeats AS SELECT key, min((part::BIGINT << 32) + row) AS position FROM outputs "
        "WHERE key IS NOT NULL GROUP BY key HAVING count(*) > 1"
    )


def _part_index(table: pa.Table, number: int, prefix: str) -> pa.Table:
    """A part's rows as `outputs` rows."""
    paths = table.column("path")  # the audio file's name, whatever folder the output was in when it was written
    names = pc.replace_substring_regex(paths, pattern=r"^.*/", replacement="")
    elsewhere = pc.and_(pc.match_substring(paths, "/"), pc.invert(pc.starts_with(paths, prefix)))
    rows = table.num_rows
    return pa.table({
        **{c: table.column(c).cast(pa.string()) for c in ("key", "input_digest", "job_digest", "source", "error")},
        "audio_size": table.column("audio_size").cast(pa.int64()), "audio": names,
        "audio_folded": pc.utf8_lower(names), "relocated": pc.fill_null(elsewhere, False),
        "part": pa.repeat(pa.scalar(number, pa.int32()), rows), "row": pa.array(range(rows), pa.int64()),
    })  # fmt: skip


def _insert(ledger: Ledger, name: str, tables: list[pa.Table]) -> None:
    """Append `tables` to the ledger's table `name` and empty the list."""
    if tables:
        ledger.insert(f"INSERT INTO {name} SELECT * FROM incoming", pa.concat_tables(tables))
        tables.clear()


def load_listing(ledger: Ledger, output: str) -> None:
    """The ledger's `listing`: the output's audio files (name, its case-folded form, size, a job's audio name?)."""
    ledger.db.execute("CREATE OR REPLACE TABLE listing (name VARCHAR, folded VARCHAR, size BIGINT, is_audio BOOLEAN)")
    for files in audio_listing(output):
        names = files.column("name")
        table = pa.table({"name": names, "folded": pc.utf8_lower(names), "size": files.column("size"),
                          "is_audio": is_audio_name(names)})  # fmt: skip
        _insert(ledger, "listing", [table])


def _match(ledger: Ledger, audio_files: bool) -> None:
    """The ledger's `matched`: each output row with its input (`book_keys`: one per key), whether it is the first
    copy of its key in read order (`repeats`: keys with several copies, usually none), and whether its audio file
    is bad (missing, or another size than was written; parts from before sizes were recorded only need the file).
    One big join per statement, each by key partition (`Ledger.partitioned`)."""
    first = "o.key IS NULL OR r.position IS NULL OR r.position = (o.part::BIGINT << 32) + o.row"
    ledger.partitioned("matched", lambda part: (
        f"SELECT o.*, b.input_digest AS in_digest, b.source AS in_source, b.key IS NOT NULL AS known, "
        f"{first} AS first_copy, false AS bad_audio FROM (SELECT * FROM outputs WHERE {part('key')}) o "
        f"LEFT JOIN (SELECT * FROM book_keys WHERE {part('key')}) b ON o.key = b.key "
        f"LEFT JOIN repeats r ON o.key = r.key"
    ))  # fmt: skip
    if audio_files:
        bad = "m.error IS NULL AND (l.name IS NULL OR coalesce(l.size <> m.audio_size, false))"
        ledger.db.execute("ALTER TABLE matched RENAME TO unlistened")
        ledger.partitioned("matched", lambda part: (
            f"SELECT m.* REPLACE ({bad} AS bad_audio) FROM (SELECT * FROM unlistened WHERE {part('audio')}) m "
            f"LEFT JOIN (SELECT * FROM listing WHERE {part('name')}) l ON m.audio = l.name"
        ))  # fmt: skip
        ledger.db.execute("DROP TABLE unlistened")


# The first reason that applies to each output row (`REASONS`), NULL when the row is kept; after the third, rows
# are only compared with their input when they have one (a gone row kept stays as it is).
_STEPS = ["outdated", "NOT first_copy", "gone AND NOT {keep_gone}", "gone OR outdated",
          "coalesce(input_digest <> in_digest, false)", "coalesce(job_digest <> $job, true)",
          "error IS NOT NULL AND {retry}", "error IS NOT NULL AND coalesce(source <> in_source, false)", "bad_audio"]  # fmt: skip
_STEP_REASONS = ["repaired", "repaired", "gone", None, "changed_input", "changed_settings", "retried", "moved",
                 "repaired"]  # fmt: skip


def plan_run(
    output: str, books: Ledger, job_digest: str, retry_failed: bool, audio_files: bool, keep_gone: bool = False
) -> RunPlan:
    """Classify every output row against the input (module docstring) and the input rows still to synthesise. With
    `keep_gone` (some input could not be read this run: a missing path, an unreadable shard) rows whose input line
    is gone are kept, not removed: a typo in a path must not delete a finished job's output; the closing check then
    reports them. All in the ledger's tables: the `plan` table holds the verdict of every output row."""
    load_index(books, output, clean=True)
    if audio_files:
        load_listing(books, output)
    _match(books, audio_files)
    steps = [s.format(keep_gone=str(keep_gone).lower(), retry=str(retry_failed).lower()) for s in _STEPS]
    step = "CASE " + " ".join(f"WHEN {s} THEN {n}" for n, s in enumerate(steps)) + " ELSE NULL END"
    books.db.execute(
        f"CREATE OR REPLACE TABLE plan AS SELECT *, NOT taken AND relocated AND NOT relabel AS relocated_kept FROM ("
        f"SELECT *, step IS NOT NULL AND step <> 3 AS taken, "
        f"(step IS NULL OR step = 3) AND coalesce(source <> in_source, false) AS relabel FROM ("
        f"SELECT *, {step} AS step FROM (SELECT *, key IS NULL AS outdated, in_digest IS NULL AND key IS NOT NULL "
        f"AS gone FROM matched)))",
        {"job": job_digest},
    )
    books.db.execute("DROP TABLE matched")
    redo = Redo()
    for number, reason in enumerate(_STEP_REASONS):
        if reason is not None:
            _count(books, redo, reason, f"step = {number}", "source" if number == 0 else "key")
    if keep_gone:
        redo.counts["gone_kept"] = books.value("SELECT count(*) FROM plan WHERE NOT taken AND gone")
    _count(books, redo, "moved", "relabel", "key")
    _count(books, redo, "relocated", "relocated_kept", "key")
    books.partitioned("todo", lambda part: (
        f"SELECT b.block, b.row, b.key, k.key IS NULL AS todo, o.key IS NULL AS new FROM "
        f"(SELECT * FROM books WHERE {part('key')}) b "
        f"LEFT JOIN (SELECT DISTINCT key FROM plan WHERE NOT taken AND {part('key')}) k ON b.key = k.key "
        f"LEFT JOIN (SELECT DISTINCT key FROM outputs WHERE {part('key')}) o ON b.key = o.key"
    ))  # fmt: skip
    _count(books, redo, "new", "todo AND new", "key", table="todo", order="block, row")
    todo = books.column("SELECT todo FROM todo ORDER BY block, row")
    query = "SELECT DISTINCT job_digest FROM plan WHERE step = 5 AND job_digest <> '' ORDER BY job_digest"
    old_digests = [digest for (digest,) in books.rows(query)]
    return RunPlan(books, todo, redo, old_digests)


def _count(
    ledger: Ledger, redo: Redo, reason: str, where: str, name: str, table: str = "plan", order: str = "part, row"
) -> None:
    """Add the rows of `table` matching `where` to `redo` under `reason`, naming the first few by `name`."""
    count = ledger.value(f"SELECT count(*) FROM {table} WHERE {where}")
    if count:
        query = f"SELECT {name} FROM {table} WHERE {where} ORDER BY {order} LIMIT {EXAMPLES}"
        redo.add(reason, count, [value for (value,) in ledger.rows(query)])


def apply_plan(output: str, plan: RunPlan) -> None:
    """Supersede what the plan removes: audio files first (a crash then leaves parts naming rows that the next run
    still removes), then each affected part rewritten with the rows it keeps."""
    deleted = 0
    for names in plan.deletions():
        delete_audio(output, names)
        deleted += len(names)
    rewritten = 0
    for part, keep, sources in plan.rewrites():
        rewrite_part(output, part, keep, sources)
        rewritten += 1
    if rewritten:
        log.info("superseded rows in %d parts; %d audio files removed", rewritten, deleted)


@dataclass
class Closing:
    """Whether the output holds every input row exactly once, as today's inputs and settings make it."""

    missing: list[str] = field(default_factory=list)  # input keys with no output row (a few named)
    extra: list[str] = field(default_factory=list)  # output keys with no input row, or a second copy
    stale: list[str] = field(default_factory=list)  # output rows whose digests differ from today's
    missing_audio: list[str] = field(default_factory=list)  # ok rows whose audio file is not there or not whole
    counts: dict[str, int] = field(default_factory=dict)
    orphans_removed: list[str] = field(default_factory=list)  # audio files no row names, removed (a few named)

    @property
    def closed(self) -> bool:
        return not any(self.counts.get(k) for k in ("missing", "extra", "stale", "missing_audio"))

    def summary(self) -> str:
        parts = [f"{self.counts[k]} {k.replace('_', ' ')} (e.g. {getattr(self, k)})" for k in
                 ("missing", "extra", "stale", "missing_audio") if self.counts.get(k)]  # fmt: skip
        return "; ".join(parts)


def close_books(output: str, books: Ledger, job_digest: str, audio_files: bool) -> Closing:
    """The check before `finished` (see `Closing`); audio files (`{id}.{format}` names) that no ok row names are
    removed (a row superseded by a crashed run leaves one); other files in the folder are left alone."""
    load_index(books, output, clean=False)
    if audio_files:
        load_listing(books, output)
    books.db.execute("DROP TABLE IF EXISTS plan; DROP TABLE IF EXISTS todo")  # the plan is done: free its pages
    _match(books, audio_files)
    # stale: a row whose input digest cannot be compared (no such input key) is extra, not stale
    books.db.execute(
        "CREATE OR REPLACE TABLE closing AS SELECT *, NOT first_copy OR NOT known AS extra, CASE WHEN input_digest "
        "IS NULL OR in_digest IS NULL THEN false ELSE input_digest <> in_digest OR coalesce(job_digest <> $job, true) "
        "END AS stale FROM matched",
        {"job": job_digest},
    )
    books.db.execute("DROP TABLE matched")
    books.partitioned("missing", lambda part: (
        f"SELECT b.key, b.block, b.row FROM (SELECT * FROM books WHERE {part('key')}) b LEFT JOIN "
        f"(SELECT DISTINCT key FROM outputs WHERE {part('key')}) o ON b.key = o.key WHERE o.key IS NULL"
    ))  # fmt: skip
    closing = Closing()
    checks = [("missing", "SELECT key, block, row FROM missing", "block, row"),
              ("extra", "SELECT key, part, row FROM closing WHERE extra", "part, row"),
              ("stale", "SELECT key, part, row FROM closing WHERE stale", "part, row")]  # fmt: skip
    if audio_files:
        checks.append(("missing_audio", "SELECT key, part, row FROM closing WHERE bad_audio", "part, row"))
        _remove_orphans(books, output, closing)
    for name, query, order in checks:
        closing.counts[name] = books.value(f"SELECT count(*) FROM ({query})")
        examples = books.rows(f"SELECT key FROM ({query}) ORDER BY {order} LIMIT {EXAMPLES}")
        setattr(closing, name, [key for (key,) in examples])
    return closing


def _remove_orphans(ledger: Ledger, output: str, closing: Closing) -> None:
    """Delete the audio files (job audio names only) that no ok row names, ignoring case."""
    query = (
        "SELECT name FROM listing WHERE is_audio AND folded NOT IN (SELECT audio_folded FROM outputs WHERE error IS "
        "NULL AND audio_folded IS NOT NULL) ORDER BY name"
    )
    count = ledger.value(f"SELECT count(*) FROM ({query})")
    if count:
        for batch in ledger.batches(query):
            delete_audio(output, batch.column(0).to_pylist())
        closing.orphans_removed = [name for (name,) in ledger.rows(f"{query} LIMIT {EXAMPLES}")]
        closing.counts["orphan_audio_removed"] = count
