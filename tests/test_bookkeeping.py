"""The offline job's driver-side bookkeeping (row keys, duplicate ids, finished rows, the report), computed in Arrow.

Each vectorised function is checked against the plain per-row definition it replaces, on rows that include every
awkward case: rows without ids (keyed by their source line), empty ids, a shard whose ids are all missing (an
Arrow column of type null), line numbers that sort differently as text and as numbers, and failed rows.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.bookkeeping import finished_keys, keep_rows, unfinished_plan
from pipeline.inputs import find_duplicates
from pipeline.parts import RUN_SCHEMA, key_array, read_outputs, write_part
from pipeline.report import JobReport, finish_report

IDS = ["a", None, "", "b", "a", "c", "b", None, "a"]
SOURCES = ["x.jsonl:9", "x.jsonl:10", "x.jsonl:11", "y.csv:row2", "x.jsonl:10", "y.csv:row10", "y.csv:row3",
           "z.txt:1", "w.parquet:0"]  # fmt: skip


def row_key(row_id: str | None, source: str) -> str:
    """Per-row definition of a row's key: its id, or its source line when it has none."""
    return row_id if row_id else f"@{source}"


def _reference_duplicates(ids: list[str | None], sources: list[str]) -> dict[str, str]:
    """Per-row definition: among rows sharing a non-empty id, the one first in (file, line number) order wins."""
    by_id: dict[str, list[str]] = defaultdict(list)
    for row_id, source in zip(ids, sources, strict=True):
        if row_id:
            by_id[row_id].append(source)
    expected = {}
    for row_id, found in by_id.items():
        ordered = sorted(found, key=lambda s: (s.rsplit(":", 1)[0], int(s.rsplit(":", 1)[1].removeprefix("row"))))
        for source in ordered[1:]:
            expected[source] = f"{source}: duplicate id {row_id!r} (first seen at {ordered[0]}); ids must be unique"
    return expected


def test_key_array_is_the_per_row_key():
    keys = key_array(pa.array(IDS), pa.array(SOURCES)).to_pylist()
    assert keys == [row_key(i, s) for i, s in zip(IDS, SOURCES, strict=True)]
    assert keys[1] == "@x.jsonl:10" and keys[2] == "@x.jsonl:11"
    no_ids = key_array(pa.array([None, None]), pa.array(["t.csv:row1", "t.csv:row2"]))  # type null
    assert no_ids.to_pylist() == ["@t.csv:row1", "@t.csv:row2"]


def test_duplicates_name_the_first_row_in_file_and_line_order():
    ids = pa.chunked_array([IDS[:4], IDS[4:]])
    found = find_duplicates(ids, pa.chunked_array([SOURCES[:4], SOURCES[4:]]))
    assert found == _reference_duplicates(IDS, SOURCES)
    # line 9 comes before line 10 (not as text: "10" < "9"); row2 before row3
    assert "x.jsonl:10" in found and "first seen at w.parquet:0" in found["x.jsonl:10"]
    assert found["y.csv:row3"].startswith("y.csv:row3: duplicate id 'b' (first seen at y.csv:row2)")
    assert find_duplicates(pa.chunked_array([["p", "q", None]]), pa.chunked_array([["f:1", "f:2", "f:3"]])) == {}
    empty = pa.chunked_array([], type=pa.string())
    assert find_duplicates(empty, empty) == {}


def test_unfinished_plan_keeps_exactly_the_rows_not_finished():
    """Blocks without finished rows pass whole, fully finished blocks are dropped, the rest are filtered by mask;
    the kept rows are exactly those whose key is not finished."""
    blocks = [
        pa.table({"id": IDS[:3], "source": SOURCES[:3]}),  # partly finished
        pa.table({"id": IDS[3:4], "source": SOURCES[3:4]}),  # none finished ("b")
        pa.table({"id": pa.array([], pa.string()), "source": pa.array([], pa.string())}),  # empty
        pa.table({"id": IDS[4:5], "source": SOURCES[4:5]}),  # all finished ("a")
        pa.table({"id": IDS[5:], "source": SOURCES[5:]}),  # partly finished
    ]
    finished = {"a", "@x.jsonl:10", "c", "zzz"}
    ids = pa.chunked_array([b.column("id") for b in blocks])
    sources = pa.chunked_array([b.column("source") for b in blocks])
    done = pc.is_in(key_array(ids, sources), value_set=pa.array(sorted(finished)))
    plan = unfinished_plan([b.num_rows for b in blocks], done)
    assert [(index, mask is None) for index, mask in plan] == [(0, False), (1, True), (4, False)]
    kept = [blocks[i] if mask is None else keep_rows(blocks[i], mask) for i, mask in plan]
    expected = [s for i, s in zip(IDS, SOURCES, strict=True) if row_key(i, s) not in finished]
    assert [s for t in kept for s in t.column("source").to_pylist()] == expected
    assert unfinished_plan([2, 1], pa.chunked_array([[True, True], [True]])) == []


def _part(rows: list[dict]) -> pa.Table:
    columns = {f.name: [r.get(f.name) for r in rows] for f in RUN_SCHEMA}
    return pa.Table.from_pydict(columns, schema=RUN_SCHEMA)


def _row(i: int, error: str | None = None, worker: str | None = "n1/1", seconds: float = 1.5, occ: float = 0.5):
    row_id = f"r{i}" if i % 5 else None  # every fifth row has no id: keyed by its source
    ok = error is None
    return {
        "id": row_id, "text": "t", "source": f"in.jsonl:{i + 1}", "error": error,
        "audio": {"bytes": b"\0", "path": f"out/audio/r{i}.flac"} if ok else None,
        "duration_s": seconds if ok else None, "worker": worker, "engine_occupancy": occ if worker else None,
        "engine": _engine(steps=(i * 7) % 61, preemptions=i) if worker and i % 4 else None,
        "spoken_text": "t" if ok else None, "dropped_chars": ("7%" if i % 6 == 1 else "") if ok else None,
    }  # fmt: skip


def _engine(steps: int, preemptions: int) -> dict:
    return {"steps": steps, "max_rows_in_flight": 8, "occupancy": 0.5, "attention_read_efficiency": 0.9,
            "kv_held_share": 0.95, "blocks_total": 64, "blocks_free": 10, "peak_blocks_used": 60,
            "preemptions": preemptions, "recomputed_tokens": 3 * preemptions}  # fmt: skip


def test_report_streams_parts_and_matches_the_per_row_definition(tmp_path: Path):
    rows = [
        _row(i, error=f"in.jsonl:{i + 1}: bad" if i % 7 == 3 else None,
             worker=None if i % 11 == 0 else f"node{i % 3}/{i % 2}", seconds=0.25 * (i % 9), occ=(i % 10) / 10)
        for i in range(60)
    ]  # fmt: skip
    output = tmp_path / "out"
    for start in range(0, 60, 8):
        write_part(_part(rows[start : start + 8]), str(output / "parts"))
    finished_before = pa.array([row_key(r["id"], r["source"]) for r in rows[:20]] + ["not-in-output"])

    report = finish_report(JobReport(output=str(output)), str(output), finished_before)

    # The per-row definition, over the same parts in the same order.
    table = read_outputs(
        str(output),
        ["id", "source", "error", "duration_s", "worker", "engine_occupancy", "engine", "dropped_chars", "audio.path"],
    )
    got = table.to_pylist()
    ok = [r for r in got if r["error"] is None]
    before = set(finished_before.to_pylist())
    assert (report.rows, report.ok, report.failed) == (60, len(ok), 60 - len(ok))
    assert report.audio_seconds == pytest.approx(sum(r["duration_s"] for r in ok))
    assert report.audio_seconds_this_run == pytest.approx(
        sum(r["duration_s"] for r in ok if row_key(r["id"], r["source"]) not in before)
    )
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
    assert all("engine" in w for w in workers.values())
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


def test_report_of_an_empty_output_and_finished_keys_of_none(tmp_path: Path):
    output = tmp_path / "out"
    assert len(finished_keys(str(output), retry_failed=False)) == 0
    report = finish_report(JobReport(output=str(output)), str(output), pa.array([], type=pa.string()))
    assert (report.rows, report.ok, report.failed, report.workers) == (0, 0, 0, {})
    assert (output / "manifest.jsonl").read_text() == ""


def test_finished_keys_are_unique_and_drop_failed_rows_when_retrying(tmp_path: Path):
    output = tmp_path / "out"
    write_part(_part([_row(0), _row(1, error="in.jsonl:2: bad"), _row(2)]), str(output / "parts"))
    write_part(_part([_row(3), _row(5)]), str(output / "parts"))
    keys = finished_keys(str(output), retry_failed=False)
    assert sorted(keys.to_pylist()) == sorted(["@in.jsonl:1", "r1", "r2", "r3", "@in.jsonl:6"])
    keys = finished_keys(str(output), retry_failed=True)
    assert sorted(keys.to_pylist()) == sorted(["@in.jsonl:1", "r2", "r3", "@in.jsonl:6"])
    assert read_outputs(str(output), ["error"]).column("error").null_count == 4


def test_a_finished_duplicate_does_not_mark_the_first_row_of_its_id_done(tmp_path: Path):
    """Two rows share id "d": the first (a.jsonl:1) is synthesised, the second (b.jsonl:1) becomes an error row.
    If a crash keeps only the duplicate's part, the re-run must still redo the first row: keys of duplicates are
    their source lines, so the id stays the first row's."""
    output = tmp_path / "out"
    duplicate = {"id": "d", "text": "t", "source": "b.jsonl:1", "error": "b.jsonl:1: duplicate id 'd' (...)"}
    write_part(_part([duplicate]), str(output / "parts"))
    ids = pa.chunked_array([["d", "e", "d"]])
    sources = pa.chunked_array([["a.jsonl:1", "a.jsonl:2", "b.jsonl:1"]])
    repeats = pa.array(list(find_duplicates(ids, sources)), type=pa.string())
    assert repeats.to_pylist() == ["b.jsonl:1"]
    finished = finished_keys(str(output), retry_failed=False, duplicates=repeats)
    assert finished.to_pylist() == ["@b.jsonl:1"]
    done = pc.is_in(key_array(ids, sources, repeats), value_set=finished).to_pylist()
    assert done == [False, False, True]  # the first "d" and "e" are redone, the finished duplicate is not


def test_source_names_are_relative_to_the_job_folder_when_inside_it(tmp_path: Path):
    """Rows without ids are keyed by their source line; naming local shards relative to the job's folder keeps
    those keys (and .txt ids) when the whole folder moves, as `ray job submit --working-dir` does every session."""
    from pipeline.sources import source_names

    inside, outside = str(tmp_path / "job" / "texts" / "a.txt"), "/elsewhere/b.jsonl"
    names = source_names([inside, outside, "bucket/c.csv", "s3://bucket/d.csv"], base=str(tmp_path / "job"))
    assert names == {inside: "texts/a.txt"}
    assert source_names([inside], base=None) == {}  # a config built in code, without a YAML: absolute names


def test_parts_written_before_the_engine_column_read_as_nulls_and_are_kept(tmp_path: Path):
    """A part from an earlier raytts (no `engine`, `spoken_text` or `dropped_chars` column) is a finished part, not an unreadable one: a clean start
    must not delete it (its rows would be synthesised again), and the report reads its engine accounting as none."""
    rows = [_row(i) for i in range(6)]
    old = _part(rows).drop_columns(["engine", "spoken_text", "dropped_chars"])
    output = tmp_path / "out"
    (output / "parts").mkdir(parents=True)
    pq.write_table(old, output / "parts" / "old.parquet")
    write_part(_part([_row(i) for i in range(6, 10)]), str(output / "parts"))
    table = read_outputs(str(output), ["id", "engine", "spoken_text", "audio.path"], clean=True)
    assert table.num_rows == 10 and (output / "parts" / "old.parquet").exists()
    assert table.column("engine").null_count >= 6 and table.column("spoken_text").null_count == 6
    report = finish_report(JobReport(output=str(output)), str(output), pa.array([], pa.string()))
    assert report.rows == 10 and report.workers["n1/1"]["engine"]["steps"] == max((i * 7) % 61 for i in (6, 7, 9))


def test_a_row_that_fails_in_the_store_stage_carries_no_audio_and_no_spoken_text(tmp_path: Path):
    """The store stage fails a row that produced no samples; like every error row it then carries neither audio nor
    what was spoken, while the row beside it keeps both."""
    from actors.tts_stage import STAGE_SCHEMA
    from pipeline.store import StoreAudio

    base = {"text": "t", "spoken_text": "t", "dropped_chars": "", "worker": "n1/1", "error": None}
    rows = [
        {**base, "id": "good", "source": "in.jsonl:1", "pcm": [0, 100, -100] * 400},
        {**base, "id": "silent", "source": "in.jsonl:2", "pcm": []},
    ]
    summary = StoreAudio(str(tmp_path / "out"), "flac", audio_files=False)(pa.Table.from_pylist(rows, STAGE_SCHEMA))
    assert summary.column("failed").to_pylist() == [1]
    got = {
        r["id"]: r
        for r in read_outputs(str(tmp_path / "out"), ["id", "error", "spoken_text", "duration_s"]).to_pylist()
    }
    assert got["silent"]["error"] == "in.jsonl:2: no audio was produced"
    assert got["silent"]["spoken_text"] is None and got["silent"]["duration_s"] is None
    assert got["good"]["error"] is None and got["good"]["spoken_text"] == "t"
