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

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .audio_files import audio_listing, delete_audio, is_audio_name
from .parts import audio_prefix, iter_parts, rewrite_part

log = logging.getLogger(__name__)

INDEX_COLUMNS = ["key", "input_digest", "job_digest", "source", "error", "audio.path", "audio_size"]
EXAMPLES = 5  # keys named per category in the report
REASONS = ("new", "changed_input", "changed_settings", "retried", "moved", "relocated", "gone", "repaired")


@dataclass
class InputBooks:
    """Every input row's key, input digest and source, in the order of the parsed blocks (`sizes` rows each)."""

    keys: pa.ChunkedArray
    digests: pa.ChunkedArray
    sources: pa.ChunkedArray
    sizes: list[int]


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
    """Every output row's key, digests, source, error, audio file name and size, whether its audio path names
    another folder than today's output (`relocated`: the output was moved), with its part (an index into `parts`,
    not a path per row) and its row number in that part."""

    rows: pa.Table
    parts: list[str]  # part paths
    sizes: list[int]  # rows per part


def read_index(output: str, clean: bool) -> OutputIndex:
    tables, parts, sizes = [], [], []
    prefix = audio_prefix(output)
    for path, table in iter_parts(output, INDEX_COLUMNS, clean):
        # the audio file's name, whatever folder the output was in when it was written
        paths = table.column("path")
        names = pc.replace_substring_regex(paths, pattern=r"^.*/", replacement="")
        elsewhere = pc.and_(pc.match_substring(paths, "/"), pc.invert(pc.starts_with(paths, prefix)))
        tables.append(
            table.drop_columns(["path"]).append_column("audio", names)
            .append_column("relocated", pc.fill_null(elsewhere, False))
            .append_column("part", pa.array([len(parts)] * table.num_rows, pa.int32()))
            .append_column("row", pa.array(range(table.num_rows), pa.int64()))
        )  # fmt: skip
        parts.append(path)
        sizes.append(table.num_rows)
    if not tables:
        schema = [(c, pa.string()) for c in ("key", "input_digest", "job_digest", "source", "error")]
        schema += [("audio_size", pa.int64()), ("audio", pa.string()), ("relocated", pa.bool_())]
        return OutputIndex(pa.schema([*schema, ("part", pa.int32()), ("row", pa.int64())]).empty_table(), [], [])
    return OutputIndex(pa.concat_tables(tables, promote_options="permissive"), parts, sizes)


def plan_run(
    output: str, books: InputBooks, job_digest: str, retry_failed: bool, audio_files: bool, keep_gone: bool = False
) -> RunPlan:
    """Classify every output row against the input (module docstring) and the input rows still to synthesise. With
    `keep_gone` (some input could not be read this run: a missing path, an unreadable shard) rows whose input line
    is gone are kept, not removed: a typo in a path must not delete a finished job's output; the closing check then
    reports them. Column operations only: no join, no Python object per row."""
    found = read_index(output, clean=True)
    index, count = found.rows, found.rows.num_rows
    keys, error, source = index.column("key"), index.column("error"), index.column("source")
    outdated = pc.is_null(keys)  # parts written by a raytts before keys were recorded
    in_digest, in_source = _lookup(keys, books)
    ok = pc.is_null(error)
    gone = pc.and_(pc.is_null(in_digest), pc.invert(outdated))
    bad_audio = _bad_audio(index, audio_listing(output)) if audio_files else pa.repeat(False, count)
    reasons = [
        ("repaired", outdated),
        ("repaired", pc.invert(_first_of_each_key(keys))),  # extra copies (a crash mid-rewrite, two old drivers)
        ("gone", pc.and_(gone, pa.repeat(not keep_gone, count))),
        ("changed_input", pc.not_equal(index.column("input_digest"), in_digest)),
        ("changed_settings", pc.fill_null(pc.not_equal(index.column("job_digest"), job_digest), True)),
        ("retried", pc.and_(pc.invert(ok), pa.repeat(retry_failed, count))),
        ("moved", pc.and_(pc.invert(ok), pc.not_equal(source, in_source))),  # an error names its old source
        ("repaired", bad_audio),  # an ok row whose audio file is gone, or not whole
    ]  # fmt: skip
    redo = Redo()
    taken = pa.repeat(False, count)
    settings_changed = pa.repeat(False, count)
    for number, (reason, mask) in enumerate(reasons):  # the first reason that applies to a row
        if number > 2:  # rows only compared with their input when they have one (a gone row kept stays as it is)
            mask = pc.and_(mask, pc.invert(pc.or_(gone, outdated)))
        mask = pc.and_(pc.fill_null(mask, False), pc.invert(taken))
        redo.add(reason, (source if number == 0 else keys).filter(mask))
        taken = pc.or_(taken, mask)
        settings_changed = mask if reason == "changed_settings" else settings_changed
    kept = pc.invert(taken)
    if keep_gone:
        redo.counts["gone_kept"] = pc.sum(pc.and_(kept, gone)).as_py() or 0
    relabel = pc.and_(kept, pc.fill_null(pc.not_equal(source, in_source), False))
    redo.add("moved", keys.filter(relabel))
    relocated = pc.and_(pc.and_(kept, index.column("relocated")), pc.invert(relabel))
    redo.add("relocated", keys.filter(relocated))

    todo = pc.invert(pc.is_in(books.keys, value_set=keys.filter(kept)))
    redo.add("new", books.keys.filter(pc.and_(todo, pc.invert(pc.is_in(books.keys, value_set=keys)))))
    old_digests = [d for d in pc.unique(index.column("job_digest").filter(settings_changed)).to_pylist() if d]
    rewrites = _rewrites(found, taken, relabel, relocated, in_source)
    return RunPlan(todo, rewrites, _deletions(index, taken, kept), redo, old_digests)


def _lookup(keys: pa.ChunkedArray, books: InputBooks) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
    """The input digest and source of each output row's key (null where the input has no such key)."""
    position = pc.index_in(keys, value_set=books.keys.combine_chunks())
    return pc.take(books.digests, position), pc.take(books.sources, position)


def _bad_audio(index: pa.Table, listing: pa.Table) -> pa.ChunkedArray:
    """Ok rows whose audio file is not there, or has another size than was written (a truncated or emptied file;
    parts from before sizes were recorded only need the file)."""
    position = pc.index_in(index.column("audio"), value_set=listing.column("name").combine_chunks())
    size = pc.take(listing.column("size"), position)
    wrong = pc.fill_null(pc.not_equal(size, index.column("audio_size")), False)
    return pc.and_(pc.is_null(index.column("error")), pc.or_(pc.is_null(position), wrong))


def _first_of_each_key(keys: pa.ChunkedArray) -> pa.Array:
    """True for the first row of each key in read order (rows without a key count as firsts)."""
    groups = pc.index_in(keys, value_set=pc.unique(keys)).to_numpy(zero_copy_only=False)
    first = np.zeros(len(groups), dtype=bool)
    first[np.unique(groups, return_index=True)[1]] = True
    return pa.array(first | pc.is_null(keys).to_numpy(zero_copy_only=False))


def _rewrites(
    found: OutputIndex,
    removed: pa.ChunkedArray,
    relabel: pa.ChunkedArray,
    relocated: pa.ChunkedArray,
    in_source: pa.ChunkedArray,
) -> dict[str, tuple[list[int], dict[int, str]]]:
    """part path -> (rows to keep, new sources) for every part that loses a row, has a row to relabel or a row
    whose audio path names another folder (`rewrite_part` puts every kept row's audio under today's output)."""
    dropped: dict[int, set[int]] = defaultdict(set)
    rows = found.rows
    for part, row in zip(*(rows.column(c).filter(removed).to_pylist() for c in ("part", "row")), strict=True):
        dropped[part].add(row)
    sources: dict[int, dict[int, str]] = defaultdict(dict)
    moved = (rows.column("part").filter(relabel), rows.column("row").filter(relabel), in_source.filter(relabel))
    for part, row, source in zip(*(c.to_pylist() for c in moved), strict=True):
        sources[part][row] = source
    touched = set(dropped) | set(sources) | set(pc.unique(rows.column("part").filter(relocated)).to_pylist())
    plans = {}
    for part in touched:
        keep = [row for row in range(found.sizes[part]) if row not in dropped[part]]
        plans[found.parts[part]] = (keep, {row: s for row, s in sources[part].items() if row not in dropped[part]})
    return plans


def _deletions(index: pa.Table, removed: pa.ChunkedArray, kept: pa.ChunkedArray) -> list[str]:
    """Audio files of removed ok rows that no kept row uses (an extra copy shares its file with the kept row)."""
    ok = pc.is_null(index.column("error"))
    names = index.column("audio").filter(pc.and_(removed, ok)).drop_null()
    if len(names) == 0:
        return []
    used = pc.utf8_lower(index.column("audio").filter(pc.and_(kept, ok)).drop_null())
    names = names.filter(pc.invert(pc.is_in(pc.utf8_lower(names), value_set=used)))
    return sorted(set(names.to_pylist()))


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


def close_books(output: str, books: InputBooks, job_digest: str, audio_files: bool) -> Closing:
    """The check before `finished` (see `Closing`); audio files (`{id}.{format}` names) that no ok row names are
    removed (a row superseded by a crashed run leaves one); other files in the folder are left alone."""
    index = read_index(output, clean=False).rows
    closing = Closing()
    keys = index.column("key")
    extra = pc.or_(pc.invert(_first_of_each_key(keys)), pc.invert(pc.is_in(keys, value_set=books.keys)))
    missing = books.keys.filter(pc.invert(pc.is_in(books.keys, value_set=keys)))
    in_digest, _ = _lookup(keys, books)
    stale = pc.fill_null(
        pc.or_(
            pc.not_equal(index.column("input_digest"), in_digest),
            pc.fill_null(pc.not_equal(index.column("job_digest"), job_digest), True),
        ),
        False,
    )
    ok = index.filter(pc.is_null(index.column("error")))
    found: list[tuple[str, Any]] = [("missing", missing), ("extra", keys.filter(extra)), ("stale", keys.filter(stale))]
    if audio_files:
        listing = audio_listing(output)
        found.append(("missing_audio", index.column("key").filter(_bad_audio(index, listing))))
        present = listing.column("name")
        named = pc.utf8_lower(ok.column("audio")) if ok.num_rows else pa.array([], pa.string())
        orphans = pc.filter(present, pc.and_(is_audio_name(present),
                                             pc.invert(pc.is_in(pc.utf8_lower(present), value_set=named))))  # fmt: skip
        if len(orphans):
            delete_audio(output, orphans.to_pylist())
            closing.orphans_removed = orphans.slice(0, EXAMPLES).to_pylist()
            closing.counts["orphan_audio_removed"] = len(orphans)
    for name, listed in found:
        closing.counts[name] = len(listed)
        setattr(closing, name, listed.slice(0, EXAMPLES).to_pylist())
    return closing
