"""The job's books: which input rows an earlier run already finished, what a re-run must redo or remove, and the
check that the output holds every input row exactly once before a run says `finished`.

A row is finished when the output holds its key once with the same input digest and job digest (`pipeline.identity`)
and, when the output keeps audio files, its file exists. Everything else in the output is superseded before any
synthesis: rows whose input or settings changed (redone), rows whose input line is gone, extra copies, rows written
by an earlier raytts, failed rows with `retry_failed`; finished rows read from a renamed or moved shard only get
their `source` rewritten. So after any sequence of edits and re-runs the output is what a fresh run on today's
inputs would write. Everything is Arrow columns: the driver holds a few bytes per row, never Python objects per row.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .audio_files import audio_names, delete_audio
from .parts import iter_parts, rewrite_part

log = logging.getLogger(__name__)

INDEX_COLUMNS = ["key", "input_digest", "job_digest", "source", "error", "audio.path"]
EXAMPLES = 5  # keys named per category in the report
REASONS = ("new", "changed_input", "changed_settings", "retried", "moved", "gone", "repaired")


@dataclass
class InputBooks:
    """Every input row's key, input digest and source, in the order of the parsed blocks (`sizes` rows each)."""

    keys: pa.ChunkedArray
    digests: pa.ChunkedArray
    sources: pa.ChunkedArray
    sizes: list[int]

    def table(self) -> pa.Table:
        return pa.table({"key": self.keys, "in_digest": self.digests, "in_source": self.sources})


@dataclass
class Redo:
    """What a run redoes or removes, and why: counts and a few keys per reason (`REASONS`)."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    settings: list[str] = field(default_factory=list)  # the settings whose change redid rows

    def add(self, reason: str, keys: pa.Array | pa.ChunkedArray) -> None:
        self.counts[reason] += len(keys)
        room = EXAMPLES - len(self.examples[reason])
        if room > 0 and len(keys):
            self.examples[reason].extend(keys.slice(0, room).to_pylist())

    def to_dict(self) -> dict[str, Any]:
        return {**self.counts, "settings_changed": self.settings,
                "examples": {k: v for k, v in self.examples.items() if v}}  # fmt: skip


@dataclass
class RunPlan:
    todo: pa.ChunkedArray  # one flag per input row (the books' order): synthesise it in this run
    rewrites: dict[str, tuple[list[int], dict[int, str]]]  # part -> (rows kept, new sources of moved rows)
    audio_to_delete: list[str]  # audio file names of rows removed
    redo: Redo
    old_job_digests: list[str]  # job digests of rows redone because the settings changed

    @property
    def to_synthesise(self) -> int:
        return pc.sum(self.todo).as_py() or 0


@dataclass
class OutputIndex:
    """Every output row's key, digests, source, error and audio file name, with its part (an index into `parts`,
    not a path per row) and its row number in that part."""

    rows: pa.Table
    parts: list[str]  # part paths
    sizes: list[int]  # rows per part


def read_index(output: str, clean: bool) -> OutputIndex:
    tables, parts, sizes = [], [], []
    for path, table in iter_parts(output, INDEX_COLUMNS, clean):
        # the audio file's name, whatever folder the output was in when it was written
        names = pc.replace_substring_regex(table.column("path"), pattern=r"^.*/", replacement="")
        tables.append(
            table.drop_columns(["path"]).append_column("audio", names)
            .append_column("part", pa.array([len(parts)] * table.num_rows, pa.int32()))
            .append_column("row", pa.array(range(table.num_rows), pa.int64()))
        )  # fmt: skip
        parts.append(path)
        sizes.append(table.num_rows)
    if not tables:
        schema = [(c, pa.string()) for c in ("key", "input_digest", "job_digest", "source", "error", "audio")]
        return OutputIndex(pa.schema([*schema, ("part", pa.int32()), ("row", pa.int64())]).empty_table(), [], [])
    return OutputIndex(pa.concat_tables(tables, promote_options="permissive"), parts, sizes)


def plan_run(
    output: str, books: InputBooks, job_digest: str, retry_failed: bool, audio_files: bool, keep_gone: bool = False
) -> RunPlan:
    """Classify every output row against the input (module docstring) and the input rows still to synthesise. With
    `keep_gone` (some input could not be read this run: a missing path, an unreadable shard) rows whose input line
    is gone are kept, not removed: a typo in a path must not delete a finished job's output; the closing check then
    reports them."""
    found = read_index(output, clean=True)
    index = found.rows
    redo = Redo()
    remove: list[pa.Table] = []
    outdated = pc.is_null(index.column("key"))  # parts written by a raytts before keys were recorded
    redo.add("repaired", index.filter(outdated).column("source"))
    remove.append(index.filter(outdated))
    index = index.filter(pc.invert(outdated))
    index = index.append_column("position", pa.array(range(index.num_rows), pa.int64()))
    first = index.group_by("key").aggregate([("position", "min")])
    extra = pc.invert(pc.is_in(index.column("position"), value_set=first.column("position_min")))
    redo.add("repaired", index.filter(extra).column("key"))
    remove.append(index.filter(extra))
    joined = index.filter(pc.invert(extra)).join(books.table(), "key", join_type="left outer")
    ok = pc.is_null(joined.column("error"))
    moved_source = pc.fill_null(pc.not_equal(joined.column("source"), joined.column("in_source")), False)
    present = audio_names(output) if audio_files else None
    missing_audio = (
        pc.and_(ok, pc.invert(pc.is_in(joined.column("audio"), value_set=present)))
        if present is not None
        else pa.repeat(False, joined.num_rows)
    )
    gone = pc.is_null(joined.column("in_digest"))
    reasons = [
        ("gone", pc.and_(gone, pa.repeat(not keep_gone, joined.num_rows))),
        ("changed_input", pc.not_equal(joined.column("input_digest"), joined.column("in_digest"))),
        ("changed_settings", pc.fill_null(pc.not_equal(joined.column("job_digest"), job_digest), True)),
        ("retried", pc.and_(pc.invert(ok), pa.repeat(retry_failed, joined.num_rows))),
        ("moved", pc.and_(pc.invert(ok), moved_source)),  # an error names its old source: redone, cheaply
        ("repaired", missing_audio),
    ]
    taken = pa.repeat(False, joined.num_rows)
    for reason, mask in reasons:  # the first reason that applies; a gone row kept is kept as it is
        mask = mask if reason == "gone" else pc.and_(mask, pc.invert(gone))
        mask = pc.and_(pc.fill_null(mask, False), pc.invert(taken))
        rows = joined.filter(mask)
        redo.add(reason, rows.column("key"))
        remove.append(rows.select(index.column_names[:-1]))
        taken = pc.or_(taken, mask)
    kept = joined.filter(pc.invert(taken))
    if keep_gone:
        redo.counts["gone_kept"] = pc.sum(pc.is_null(kept.column("in_digest"))).as_py() or 0
    relabel = kept.filter(pc.fill_null(pc.not_equal(kept.column("source"), kept.column("in_source")), False))
    redo.add("moved", relabel.column("key"))
    todo = pc.invert(pc.is_in(books.keys, value_set=kept.column("key")))
    known = pa.concat_arrays([c for c in index.column("key").chunks] or [pa.array([], pa.string())])
    redo.add("new", pc.filter(books.keys, pc.and_(todo, pc.invert(pc.is_in(books.keys, value_set=known)))))
    settings = pc.fill_null(pc.not_equal(joined.column("job_digest"), job_digest), True)
    changed = joined.filter(pc.and_(pc.and_(taken, settings), pc.is_valid(joined.column("in_digest"))))
    old_digests = [d for d in pc.unique(changed.column("job_digest")).to_pylist() if d]
    return RunPlan(todo, _rewrites(found, remove, relabel), _deletions(remove, kept), redo, old_digests)


def _rewrites(
    found: OutputIndex, remove: list[pa.Table], relabel: pa.Table
) -> dict[str, tuple[list[int], dict[int, str]]]:
    """part path -> (rows to keep, new sources) for every part that loses a row or has a row to relabel."""
    dropped: dict[int, set[int]] = defaultdict(set)
    for table in remove:
        for part, row in zip(table.column("part").to_pylist(), table.column("row").to_pylist(), strict=True):
            dropped[part].add(row)
    sources: dict[int, dict[int, str]] = defaultdict(dict)
    for part, row, source in zip(*(relabel.column(c).to_pylist() for c in ("part", "row", "in_source")), strict=True):
        sources[part][row] = source
    plans = {}
    for part in set(dropped) | set(sources):
        keep = [row for row in range(found.sizes[part]) if row not in dropped[part]]
        plans[found.parts[part]] = (keep, {row: s for row, s in sources[part].items() if row not in dropped[part]})
    return plans


def _deletions(remove: list[pa.Table], kept: pa.Table) -> list[str]:
    """Audio files of removed ok rows that no kept row uses (an extra copy shares its file with the kept row)."""
    used = {name.casefold() for name in kept.column("audio").to_pylist() if name}
    names = set()
    for table in remove:
        ok = table.filter(pc.is_null(table.column("error")))
        names.update(name for name in ok.column("audio").to_pylist() if name and name.casefold() not in used)
    return sorted(names)


def apply_plan(output: str, plan: RunPlan) -> None:
    """Supersede what the plan removes: audio files first (a crash then leaves parts naming rows that the next run
    still removes), then each affected part rewritten with the rows it keeps."""
    if plan.audio_to_delete:
        delete_audio(output, plan.audio_to_delete)
    for part, (keep, sources) in sorted(plan.rewrites.items()):
        rewrite_part(output, part, keep, sources)
    if plan.rewrites:
        log.info("superseded rows in %d parts; %d audio files removed", len(plan.rewrites), len(plan.audio_to_delete))


@dataclass
class Closing:
    """Whether the output holds every input row exactly once, as today's inputs and settings make it."""

    missing: list[str] = field(default_factory=list)  # input keys with no output row (a few named)
    extra: list[str] = field(default_factory=list)  # output keys with no input row, or a second copy
    stale: list[str] = field(default_factory=list)  # output rows whose digests differ from today's
    missing_audio: list[str] = field(default_factory=list)  # ok rows whose audio file is not there
    counts: dict[str, int] = field(default_factory=dict)
    orphans_removed: int = 0  # audio files no row names, removed

    @property
    def closed(self) -> bool:
        return not any(self.counts.get(k) for k in ("missing", "extra", "stale", "missing_audio"))

    def summary(self) -> str:
        parts = [f"{self.counts[k]} {k.replace('_', ' ')} (e.g. {getattr(self, k)})" for k in
                 ("missing", "extra", "stale", "missing_audio") if self.counts.get(k)]  # fmt: skip
        return "; ".join(parts)


def close_books(output: str, books: InputBooks, job_digest: str, audio_files: bool) -> Closing:
    """The check before `finished` (see `Closing`); audio files that no ok row names are removed (a store actor
    killed after writing one, whose row another attempt wrote again under the same name, leaves none; a row
    superseded by a crashed run can)."""
    index = read_index(output, clean=False).rows
    closing = Closing()
    counts = index.group_by("key").aggregate([("row", "count")])
    repeated = counts.filter(pc.greater(counts.column("row_count"), 1)).column("key")
    unknown = pc.invert(pc.is_in(index.column("key"), value_set=books.keys))
    extra = pa.concat_arrays([repeated.combine_chunks(), index.filter(unknown).column("key").combine_chunks()])
    missing = pc.filter(books.keys, pc.invert(pc.is_in(books.keys, value_set=index.column("key"))))
    joined = index.join(books.table(), "key", join_type="inner")
    stale = pc.or_(
        pc.not_equal(joined.column("input_digest"), joined.column("in_digest")),
        pc.fill_null(pc.not_equal(joined.column("job_digest"), job_digest), True),
    )
    ok = index.filter(pc.is_null(index.column("error")))
    found: list[tuple[str, Any]] = [
        ("missing", missing),
        ("extra", extra),
        ("stale", joined.filter(stale).column("key")),
    ]
    if audio_files:
        present = audio_names(output)
        found.append(
            ("missing_audio", ok.filter(pc.invert(pc.is_in(ok.column("audio"), value_set=present))).column("key"))
        )
        named = pc.utf8_lower(ok.column("audio")) if ok.num_rows else pa.array([], pa.string())
        orphans = pc.filter(present, pc.invert(pc.is_in(pc.utf8_lower(present), value_set=named)))
        if len(orphans):
            delete_audio(output, orphans.to_pylist())
            closing.orphans_removed = len(orphans)
    for name, keys in found:
        closing.counts[name] = len(keys)
        setattr(closing, name, keys.slice(0, EXAMPLES).to_pylist())
    return closing
