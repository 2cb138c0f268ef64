"""The offline job's books (row identity, what a re-run keeps, redoes and removes, the closing check, the report),
computed in Arrow, checked against plain per-row definitions over generated outputs and inputs (hypothesis).

No Ray here: parts are written with the job's own writer into a temporary folder.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from unittest.mock import patch

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import ledger
from pipeline.books import apply_plan, close_books, plan_run
from pipeline.inputs import identity_fixups
from pipeline.ledger import Ledger
from pipeline.parts import RUN_SCHEMA, read_outputs, rewrite_part, write_part
from pipeline.report import JobReport, finish_report

IDS = ["a", None, "", "b", "a", "c", "b", None, "a", "h-1", "h-1", "h-1"]
SOURCES = ["x.jsonl:9", "x.jsonl:10", "x.jsonl:11", "y.csv:row2", "x.jsonl:12", "y.csv:row10", "y.csv:row3",
           "z.txt:1", "w.parquet:0", "t.txt:12", "t.txt:3", "s.txt:40"]  # fmt: skip
DERIVED = [False] * 9 + [True] * 3


def _order(source: str) -> tuple[str, int]:
    name, line = source.rsplit(":", 1)
    return name, int(line.removeprefix("row"))


def test_identity_fixups_match_the_per_row_definition():
    """Repeated content-derived ids get -2, -3 in (file, line) order; an explicit id seen earlier makes the row a
    duplicate keyed by its source (line 9 before line 10: numbers, not text)."""
    chunks = lambda values: pa.chunked_array([values[:5], values[5:]])  # noqa: E731
    fixups = identity_fixups(chunks(IDS), chunks(SOURCES), chunks(DERIVED))
    rows = {s: (i, d) for s, i, d in zip(SOURCES, IDS, DERIVED, strict=True) if i}
    seen_derived: dict[str, int] = defaultdict(int)
    owner: dict[str, str] = {}
    expected: dict[str, dict] = {}
    for source in sorted(rows, key=_order):
        row_id, derived = rows[source]
        if derived:
            seen_derived[row_id] += 1
            if seen_derived[row_id] > 1:
                new = f"{row_id}-{seen_derived[row_id]}"
                expected[source] = {"id": new, "key": new}
        elif row_id in owner:
            error = f"{source}: duplicate id {row_id!r} (first seen at {owner[row_id]}); ids must be unique"
            expected[source] = {"error": error, "key": f"@{source}"}
        else:
            owner[row_id] = source
    got = {s: {k: v for k, v in f.items() if k != "input_digest"} for s, f in fixups.items()}
    assert got == expected
    assert (
        "s.txt:40" not in got and got["t.txt:3"]["id"] == "h-1-2" and got["t.txt:12"]["id"] == "h-1-3"
    )  # s < t; 3 < 12
    assert all(len(f["input_digest"]) == 32 for f in fixups.values() if "error" in f)


# --------------------------------------------------------------------------------------------------- parts


def _part(rows: list[dict]) -> pa.Table:
    columns = {f.name: [r.get(f.name) for r in rows] for f in RUN_SCHEMA}
    return pa.Table.from_pydict(columns, schema=RUN_SCHEMA)


def _out_row(key: str, digest: str = "d", job: str = "J", source: str | None = None, error: str | None = None):
    ok = error is None
    return {
        "id": key.removeprefix("@"), "key": key, "input_digest": digest, "job_digest": job, "text": "t",
        "source": source or f"in.jsonl:{key}", "error": error, "duration_s": 1.0 if ok else None,
        "audio": {"bytes": b"\0", "path": f"/old/place/audio/{key.lower()}.flac"} if ok else None,
        "spoken_text": "t" if ok else None, "dropped_chars": "" if ok else None, "worker": "n1/1",
    }  # fmt: skip


def _books(rows: list[tuple[str, str, str]]) -> Ledger:
    keys, digests, sources = ([r[i] for r in rows] for i in range(3))
    return Ledger.from_books(keys, digests, sources)


OUTPUT_ROWS = st.lists(
    st.tuples(
        st.sampled_from(["k0", "k1", "k2", "k3", "k4", "K4", None]),  # None: a part from an earlier raytts
        st.sampled_from(["d", "d", "e"]),  # input digest
        st.sampled_from(["J", "J", "old"]),  # job digest
        st.sampled_from(["", "moved"]),  # source suffix
        st.booleans(),  # failed
        st.integers(0, 2),  # which part
    ),
    max_size=10,
)
INPUT_ROWS = st.lists(st.tuples(st.sampled_from(["k0", "k1", "k2", "k5"]), st.sampled_from(["d", "e"])), max_size=5)


def _reference(out: list[dict], inputs: dict[str, tuple[str, str]], retry: bool, keep_gone: bool, present: set):
    """Per-row definition of the plan: (reason per removed (part, row), finished keys, new sources of kept rows)."""
    seen, removed, finished, relabel = set(), {}, set(), {}
    for r in out:
        where = (r["part"], r["row"])
        if r["key"] is None or r["key"] in seen:
            removed[where] = "repaired"
            continue
        seen.add(r["key"])
        wanted = inputs.get(r["key"])
        if wanted is None:
            if not keep_gone:
                removed[where] = "gone"
            continue
        digest, source = wanted
        if r["input_digest"] != digest:
            removed[where] = "changed_input"
        elif r["job_digest"] != "J":
            removed[where] = "changed_settings"
        elif r["error"] and retry:
            removed[where] = "retried"
        elif r["error"] and r["source"] != source:
            removed[where] = "moved"
        elif not r["error"] and r["audio"] not in present:
            removed[where] = "repaired"
        else:
            finished.add(r["key"])
            if r["source"] != source:
                relabel[where] = source
    return removed, finished, relabel


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(
    out=OUTPUT_ROWS, inputs=INPUT_ROWS, retry=st.booleans(), keep_gone=st.booleans(), split=st.sampled_from([0, 1, 3])
)
def test_the_plan_matches_the_per_row_definition_and_a_second_plan_has_nothing_left(
    tmp_path_factory, out, inputs, retry, keep_gone, split
):
    """`split`: rows per key partition of the ledger's joins (0: the default, one partition at this size)."""
    with patch.object(ledger, "PARTITION_ROWS", split or ledger.PARTITION_ROWS):
        _check_plan(tmp_path_factory, out, inputs, retry, keep_gone)


def _check_plan(tmp_path_factory, out, inputs, retry, keep_gone) -> None:
    output = tmp_path_factory.mktemp("books")
    by_part: dict[int, list[dict]] = defaultdict(list)
    for key, digest, job, suffix, failed, part in out:
        row = _out_row(key or "x", digest, job, f"in.jsonl:{key}{suffix}", "in.jsonl: bad" if failed else None)
        row["key"] = key
        if row["audio"]:  # written under this output (a moved output: test_a_moved_output_...)
            row["audio"]["path"] = f"{output}/audio/{(key or 'x').lower()}.flac"
        by_part[part].append(row)
    parts = {}
    for index, rows in by_part.items():
        table = _part(rows)
        path = output / "parts" / f"p{index}.parquet"  # fixed names: the read order is the parts' name order
        path.parent.mkdir(exist_ok=True)
        pq.write_table(table, path)
        parts[index] = str(path)
    read = [{**r, "part": parts[i], "row": n} for i in sorted(by_part) for n, r in enumerate(by_part[i])]
    for r in read:
        r["audio"] = r["audio"]["path"].rsplit("/", 1)[1] if r["audio"] else None
    present = {r["audio"] for r in read[::2] if r["audio"]}  # every other row's audio file exists
    (output / "audio").mkdir()
    for name in present:
        (output / "audio" / name).write_bytes(b"\0")
    unique = {}
    for key, digest in inputs:
        unique.setdefault(key, (digest, f"in.jsonl:{key}"))
    books = _books([(k, d, s) for k, (d, s) in unique.items()])

    plan = plan_run(str(output), books, "J", retry, audio_files=True, keep_gone=keep_gone)

    removed, finished, relabel = _reference(read, unique, retry, keep_gone, present)
    sizes = {parts[i]: len(rows) for i, rows in by_part.items()}
    rewrites = {p: (keep, sources) for p, keep, sources in plan.rewrites()}
    got_removed = {(p, r) for p, (keep, _) in rewrites.items() for r in range(sizes[p]) if r not in keep}
    assert got_removed == set(removed), (out, inputs, retry, keep_gone, present)
    assert {(p, r): s for p, (_, sources) in rewrites.items() for r, s in sources.items()} == relabel
    assert plan.todo.to_pylist() == [k not in finished for k in unique]
    counts = defaultdict(int)
    for reason in removed.values():
        counts[reason] += 1
    counts["moved"] += len(relabel)
    counts = {k: v for k, v in counts.items() if v}
    assert {k: v for k, v in plan.redo.counts.items() if v and k not in ("new", "gone_kept")} == dict(counts)

    apply_plan(str(output), plan)
    again = plan_run(str(output), books, "J", retry, audio_files=True, keep_gone=keep_gone)
    assert list(again.rewrites()) == [] and again.audio_to_delete == []
    assert again.todo.to_pylist() == plan.todo.to_pylist()
    kept_audio = {r["path"] for r in read_outputs(str(output), ["error", "audio.path"]).to_pylist() if r["path"]}
    assert set(plan.audio_to_delete).isdisjoint({p.rsplit("/", 1)[1] for p in kept_audio})


def test_a_crash_between_writing_kept_rows_and_deleting_the_old_part_leaves_a_copy_the_next_plan_removes(tmp_path):
    output = tmp_path / "out"
    old = write_part(_part([_out_row("k1"), _out_row("k2", digest="stale")]), str(output / "parts"))
    (output / "audio").mkdir()
    (output / "audio" / "k1.flac").write_bytes(b"\0")
    write_part(_part([_out_row("k1")]), str(output / "parts"))  # the kept row written; the old part never deleted
    books = _books([("k1", "d", "in.jsonl:k1"), ("k2", "d", "in.jsonl:k2")])
    plan = plan_run(str(output), books, "J", retry_failed=False, audio_files=True)
    assert plan.redo.counts["repaired"] == 1 and plan.redo.counts["changed_input"] == 1
    assert plan.todo.to_pylist() == [False, True] and plan.audio_to_delete == ["k2.flac"]  # k1's: still used
    apply_plan(str(output), plan)
    keys = read_outputs(str(output), ["key"]).column("key").to_pylist()
    assert keys == ["k1"] and (output / "audio" / "k1.flac").exists() and not Path(old).exists()


def test_rewrite_part_relabels_in_place(tmp_path):
    output = tmp_path / "out"
    path = write_part(_part([_out_row("k1"), _out_row("k2")]), str(output / "parts"))
    rewrite_part(str(output), path, [0, 1], {1: "renamed.jsonl:7"})
    assert [p.name for p in (output / "parts").iterdir()] == [Path(path).name]
    assert read_outputs(str(output), ["source"]).column("source").to_pylist() == ["in.jsonl:k1", "renamed.jsonl:7"]


@pytest.mark.parametrize("split", [0, 1, 2])
def test_closing_finds_missing_extra_stale_rows_and_missing_audio_and_removes_orphan_audio(tmp_path, split):
    """`split`: rows per key partition of the ledger's joins (0: the default, one partition at this size)."""
    with patch.object(ledger, "PARTITION_ROWS", split or ledger.PARTITION_ROWS):
        _check_closing(tmp_path)


def _check_closing(tmp_path: Path) -> None:
    output = tmp_path / "out"
    write_part(_part([_out_row("k1"), _out_row("k2", job="old"), _out_row("x9")]), str(output / "parts"))
    write_part(_part([_out_row("k1", source="again:1")]), str(output / "parts"))
    (output / "audio").mkdir()
    for name in ("k2.flac", "x9.flac", "orphan.flac", "notes.txt"):  # notes.txt: not the job's, left alone
        (output / "audio" / name).write_bytes(b"\0")
    books = _books([("k1", "d", "in.jsonl:k1"), ("k2", "d", "in.jsonl:k2"), ("k3", "d", "in.jsonl:k3")])
    closing = close_books(str(output), books, "J", audio_files=True)
    assert not closing.closed
    assert closing.counts == {"missing": 1, "extra": 2, "stale": 1, "missing_audio": 2, "orphan_audio_removed": 1}
    assert closing.missing == ["k3"] and sorted(closing.extra) == ["k1", "x9"] and closing.stale == ["k2"]
    assert sorted(closing.missing_audio) == ["k1", "k1"] and closing.orphans_removed == ["orphan.flac"]
    assert sorted(p.name for p in (output / "audio").iterdir()) == ["k2.flac", "notes.txt", "x9.flac"]
    fine = _books([("k2", "d", "in.jsonl:k2")])
    clean = tmp_path / "clean"
    write_part(_part([_out_row("k2")]), str(clean / "parts"))
    (clean / "audio").mkdir()
    (clean / "audio" / "k2.flac").write_bytes(b"\0")
    assert close_books(str(clean), fine, "J", audio_files=True).closed


# --------------------------------------------------------------------------------------------------- report


def _report_row(i: int, error: str | None = None, worker: str | None = "n1/1", seconds: float = 1.5, occ=0.5):
    ok = error is None
    return {
        "id": f"r{i}", "key": f"r{i}", "input_digest": "d", "job_digest": "J", "text": "t",
        "source": f"in.jsonl:{i + 1}", "error": error,
        "audio": {"bytes": b"\0", "path": f"out/audio/r{i}.flac"} if ok else None,
        "duration_s": seconds if ok else None, "worker": worker, "engine_occupancy": occ if worker else None,
        "engine": _engine(steps=(i * 7) % 61, preemptions=i) if worker and i % 4 else None,
        "spoken_text": "t" if ok else None, "dropped_chars": ("7%" if i % 6 == 1 else "") if ok else None,
    }  # fmt: skip


def _engine(steps: int, preemptions: int) -> dict:
    return {"steps": steps, "max_rows_in_flight": 8, "occupancy": 0.5, "attention_read_efficiency": 0.9,
            "kv_held_share": 0.95, "blocks_total": 64, "blocks_free": 10, "peak_blocks_used": 60,
            "preemptions": preemptions, "recomputed_tokens": 3 * preemptions}  # fmt: skip


def _closed():
    from pipeline.books import Closing

    return Closing(counts={"missing": 0, "extra": 0, "stale": 0, "missing_audio": 0})


def test_report_streams_parts_and_matches_the_per_row_definition(tmp_path: Path):
    rows = [
        _report_row(i, error=f"in.jsonl:{i + 1}: bad" if i % 7 == 3 else None,
                    worker=None if i % 11 == 0 else f"node{i % 3}/{i % 2}", seconds=0.25 * (i % 9), occ=(i % 10) / 10)
        for i in range(60)
    ]  # fmt: skip
    output = tmp_path / "out"
    for start in range(0, 60, 8):
        write_part(_part(rows[start : start + 8]), str(output / "parts"))

    report = finish_report(JobReport(output=str(output)), str(output), _closed(), 12.5)

    table = read_outputs(
        str(output),
        ["id", "source", "error", "duration_s", "worker", "engine_occupancy", "engine", "dropped_chars", "audio.path"],
    )
    got = table.to_pylist()
    ok = [r for r in got if r["error"] is None]
    assert (report.rows, report.ok, report.failed) == (60, len(ok), 60 - len(ok))
    assert report.audio_seconds == pytest.approx(sum(r["duration_s"] for r in ok))
    assert report.audio_seconds_this_run == 12.5 and report.status == "finished"
    assert report.failures == [{"id": r["id"], "source": r["source"], "error": r["error"]} for r in got if r["error"]]
    assert report.dropped_chars_rows == sum(1 for r in ok if r["dropped_chars"]) > 0
    workers: dict[str, dict[str, float]] = {}
    for r in got:
        if r["worker"]:
            w = workers.setdefault(r["worker"], {"rows": 0, "audio_seconds": 0.0, "occupancy": 0.0})
            w["rows"] += 1
            w["audio_seconds"] += r["duration_s"] or 0.0
            w["occupancy"] = max(w["occupancy"], r["engine_occupancy"] or 0.0)
            if r["engine"] and r["engine"]["steps"] >= w.get("engine", {"steps": -1})["steps"]:
                w["engine"] = r["engine"]  # the latest accounting: most steps (unique here)
    assert report.workers.keys() == workers.keys()
    for name, w in workers.items():
        assert report.workers[name]["rows"] == w["rows"]
        assert report.workers[name]["audio_seconds"] == pytest.approx(w["audio_seconds"], abs=1e-3)
        assert report.workers[name]["occupancy"] == pytest.approx(w["occupancy"], abs=1e-3)
        assert report.workers[name]["engine"] == w["engine"]
    manifest = [json.loads(line) for line in (output / "manifest.jsonl").read_text().splitlines()]
    assert manifest == [
        {"id": r["id"], "audio": r["path"], "duration_s": r["duration_s"], "error": r["error"]} for r in got
    ]
    saved = json.loads((output / "_report.json").read_text())
    assert (saved["rows"], saved["failed"], len(saved["failures"])) == (60, report.failed, report.failed)


def test_a_report_whose_books_do_not_close_is_incomplete_and_fails(tmp_path: Path):
    from pipeline.books import Closing

    output = tmp_path / "out"
    closing = Closing(missing=["k3"], counts={"missing": 1, "extra": 0, "stale": 0, "missing_audio": 0})
    report = finish_report(JobReport(output=str(output)), str(output), closing, 0.0)
    assert report.status == "incomplete" and report.exit_status == 1
    saved = json.loads((output / "_report.json").read_text())
    assert saved["status"] == "incomplete" and "1 missing (e.g. ['k3'])" in saved["books"]["problem"]


def test_parts_from_an_earlier_raytts_are_read_and_superseded_not_deleted_as_unreadable(tmp_path: Path):
    """A part written before rows carried keys and digests (no `key` column) is readable: the report counts it and
    the next plan redoes its rows once (`repaired`), instead of a clean start deleting it as a broken file."""
    output = tmp_path / "out"
    (output / "parts").mkdir(parents=True)
    old = _part([_report_row(i) for i in range(3)]).drop_columns(["key", "input_digest", "job_digest", "engine"])
    pq.write_table(old, output / "parts" / "old.parquet")
    report = finish_report(JobReport(output=str(output)), str(output), _closed(), 0.0)
    assert report.rows == 3 and (output / "parts" / "old.parquet").exists()
    books = _books([("r0", "d", "in.jsonl:1")])
    plan = plan_run(str(output), books, "J", retry_failed=False, audio_files=False)
    assert plan.redo.counts["repaired"] == 3 and plan.todo.to_pylist() == [True]


def test_a_row_that_fails_in_the_store_stage_carries_no_audio_and_no_spoken_text(tmp_path: Path):
    """The store stage fails a row that produced no samples; like every error row it then carries neither audio nor
    what was spoken, while the row beside it keeps both; every row records the job digest."""
    from actors.tts_stage import STAGE_SCHEMA
    from pipeline.lease import OutputLease
    from pipeline.store import StoreAudio

    base = {"text": "t", "spoken_text": "t", "dropped_chars": "", "worker": "n1/1", "error": None}
    rows = [
        {**base, "id": "good", "key": "good", "source": "in.jsonl:1", "pcm": [0, 100, -100] * 400},
        {**base, "id": "silent", "key": "silent", "source": "in.jsonl:2", "pcm": []},
    ]
    output = str(tmp_path / "out")
    with OutputLease(output) as lease:
        store = StoreAudio(output, "flac", audio_files=False, job_digest="J", lease=lease.token_for_workers)
        summary = store(pa.Table.from_pylist(rows, STAGE_SCHEMA))
    assert summary.column("failed").to_pylist() == [1]
    assert summary.column("seconds").to_pylist() == [pytest.approx(1200 / 24000)]
    got = {
        r["id"]: r for r in read_outputs(output, ["id", "error", "spoken_text", "duration_s", "job_digest"]).to_pylist()
    }
    assert got["silent"]["error"] == "in.jsonl:2: no audio was produced"
    assert got["silent"]["spoken_text"] is None and got["silent"]["duration_s"] is None
    assert got["good"]["error"] is None and got["good"]["spoken_text"] == "t" and got["good"]["job_digest"] == "J"


def test_source_names_are_relative_to_the_job_folder_when_inside_it(tmp_path: Path):
    """Local shards are named relative to the job's folder, so sources stay the same when the whole folder moves, as
    `ray job submit --working-dir` does every session (rows then need no relabelling)."""
    from pipeline.sources import source_names

    inside, outside = str(tmp_path / "job" / "texts" / "a.txt"), "/elsewhere/b.jsonl"
    names = source_names([inside, outside, "bucket/c.csv", "s3://bucket/d.csv"], base=str(tmp_path / "job"))
    assert names == {inside: "texts/a.txt"}
    assert source_names([inside], base=None) == {}  # a config built in code, without a YAML: absolute names


def test_a_moved_output_gets_its_audio_paths_rewritten_and_nothing_redone(tmp_path):
    """Rows written under /old/place (the output folder was moved since) keep their audio, with paths under today's
    folder: a reader of the parts or the manifest finds every file."""
    output = tmp_path / "out"
    write_part(_part([_out_row("k1"), _out_row("k2")]), str(output / "parts"))
    (output / "audio").mkdir()
    for name in ("k1.flac", "k2.flac"):
        (output / "audio" / name).write_bytes(b"\0")
    books = _books([("k1", "d", "in.jsonl:k1"), ("k2", "d", "in.jsonl:k2")])
    plan = plan_run(str(output), books, "J", retry_failed=False, audio_files=True)
    assert plan.to_synthesise == 0 and plan.redo.counts["relocated"] == 2 and not plan.audio_to_delete
    apply_plan(str(output), plan)
    paths = read_outputs(str(output), ["audio.path"]).column("path").to_pylist()
    assert paths == [f"{output}/audio/k1.flac", f"{output}/audio/k2.flac"]
    again = plan_run(str(output), books, "J", retry_failed=False, audio_files=True)
    assert again.redo.counts["relocated"] == 0 and not list(again.rewrites())


def test_a_truncated_audio_file_is_redone(tmp_path):
    """An ok row whose file has another size than its part recorded (cut short, emptied) is not finished."""
    output = tmp_path / "out"
    rows = [{**_out_row(key), "audio_size": 4} for key in ("k1", "k2")]
    write_part(_part(rows), str(output / "parts"))
    (output / "audio").mkdir()
    (output / "audio" / "k1.flac").write_bytes(b"\0" * 4)
    (output / "audio" / "k2.flac").write_bytes(b"")  # emptied
    books = _books([("k1", "d", "in.jsonl:k1"), ("k2", "d", "in.jsonl:k2")])
    closing = close_books(str(output), books, "J", audio_files=True)
    assert closing.missing_audio == ["k2"] and not closing.closed
    plan = plan_run(str(output), books, "J", retry_failed=False, audio_files=True)
    assert plan.todo.to_pylist() == [False, True] and plan.redo.examples["repaired"] == ["k2"]
