"""Shard listing and parsing without Ray: local and object-storage (SeaweedFS on loopback) paths, and the inputs
that used to kill a shard's parse or swallow rows."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from pipeline.csvrows import csv_records
from pipeline.shards import parse_text_shard
from pipeline.sources import TEXT_EXTENSIONS, expand_paths
from pipeline.speaker_shards import parse_speaker_shard


def test_overlapping_specs_name_each_file_once(tmp_path):
    """A folder plus a glob inside it (or the same file twice) must not read a shard twice: its rows would all be
    flagged as duplicates of themselves."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.jsonl").write_text('{"id": "a", "text": "x"}\n')
    (tmp_path / "sub" / "b.csv").write_text("id,text\nb,y\n")
    specs = [str(tmp_path), str(tmp_path / "*.jsonl"), str(tmp_path / "a.jsonl"), f"file://{tmp_path}/sub/b.csv"]
    files, problems, _ = expand_paths(specs, TEXT_EXTENSIONS)
    assert problems == []
    assert files == [str(tmp_path / "a.jsonl"), str(tmp_path / "sub" / "b.csv")]


@pytest.fixture(scope="module")
def bucket(s3_server, monkeypatch_module):
    for key, value in s3_server.env().items():
        monkeypatch_module.setenv(key, value)
    client = s3_server.client()
    client.create_bucket(Bucket="shards")
    for key in ("texts/a.jsonl", "texts/b.csv", "texts/notes.md", "texts/deep/c.txt", "texts/deep/d.parquet"):
        client.put_object(Bucket="shards", Key=key, Body=b"id,text\nx,y\n")
    return "s3://shards"


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("texts/*.jsonl", ["texts/a.jsonl"]),
        ("texts/*", ["texts/a.jsonl", "texts/b.csv"]),  # one segment; notes.md is not a shard format (a problem)
        ("texts/**/*.parquet", ["texts/deep/d.parquet"]),
        ("texts/**", ["texts/a.jsonl", "texts/b.csv", "texts/deep/c.txt", "texts/deep/d.parquet"]),
        ("texts/[ab].*", ["texts/a.jsonl", "texts/b.csv"]),
        ("texts", ["texts/a.jsonl", "texts/b.csv", "texts/deep/c.txt", "texts/deep/d.parquet"]),
        ("texts/", ["texts/a.jsonl", "texts/b.csv", "texts/deep/c.txt", "texts/deep/d.parquet"]),
        ("texts/b.csv", ["texts/b.csv"]),
    ],
)
def test_object_storage_files_folders_and_globs(bucket, spec, expected):
    files, problems, _ = expand_paths([f"{bucket}/{spec}"], TEXT_EXTENSIONS)
    assert files == [f"{bucket}/{key}" for key in expected]
    # notes.md is no shard: a spec that names it (a folder, `*`, `**`) reports it as not read, never skips it silently
    names_notes = spec.rstrip("/") in ("texts", "texts/*", "texts/**")
    assert len(problems) == (1 if names_notes else 0), problems
    assert all(p.startswith(f"{bucket}/texts/notes.md: not read: unknown shard format") for p in problems), problems


def test_object_storage_problems_are_reported_not_raised(bucket):
    specs = [f"{bucket}/missing.jsonl", f"{bucket}/texts/*.tsv", f"{bucket}/texts/notes.md", "s3://no-such-bucket/x/"]
    files, problems, _ = expand_paths(specs, TEXT_EXTENSIONS)
    assert files == []
    assert len(problems) == 4
    assert problems[0].startswith(f"{bucket}/missing.jsonl: no such object")
    assert "matches no" in problems[1]
    assert "unknown shard format" in problems[2]
    assert problems[3].startswith("s3://no-such-bucket/x/: ")


def test_csv_with_a_byte_order_mark_reads_its_header():
    rows = parse_text_shard("/d/b.csv", "\ufeffid,text\nr1,hello\n".encode())
    assert [(r["id"], r["text"], r["error"]) for r in rows] == [("r1", "hello", None)]


def test_csv_field_longer_than_the_csv_module_limit_is_a_row():
    """Python's csv refuses fields over 131,072 characters by raising for the whole file; such a row must reach
    the job (where max_chars fails it alone)."""
    text = "y" * 200_000
    rows = parse_text_shard("/d/b.csv", f"id,text\nlong,{text}\nshort,ok\n".encode())
    assert [(r["id"], len(r["text"]), r["error"]) for r in rows] == [("long", 200_000, None), ("short", 2, None)]


def test_unterminated_quote_fails_one_row_and_keeps_the_rest():
    data = 'id,text\na,"never closed\nb,second\nc,"multi\nline"\nd,"bad"x,\ne,last\n'
    rows = parse_text_shard("/d/b.csv", data.encode())
    by_source = {r["source"]: r for r in rows}
    assert "malformed CSV record" in by_source["/d/b.csv:2"]["error"]
    assert [(r["id"], r["text"]) for r in rows if r["error"] is None] == [
        ("b", "second"),
        ("c", "multi\nline"),
        ("e", "last"),
    ]
    assert "malformed CSV record" in by_source["/d/b.csv:6"]["error"]  # a quote inside a quoted field
    assert len(rows) == 5  # a, b, c, d, e: nothing vanished


def test_csv_lines_split_only_at_newlines():
    """Unicode line separators inside a field are text, not line ends."""
    rows = parse_text_shard("/d/b.csv", "id,text\nr1,one\u2028two\x1cthree\nr2,four\n".encode())
    assert [(r["id"], r["text"], r["source"]) for r in rows] == [
        ("r1", "one\u2028two\x1cthree", "/d/b.csv:2"),
        ("r2", "four", "/d/b.csv:3"),
    ]


def test_csv_records_report_the_last_line_of_a_multiline_record():
    assert list(csv_records('h\n"a\nb"\nc\n')) == [(1, ["h"], None), (3, ["a\nb"], None), (4, ["c"], None)]


def test_unreadable_parquet_is_one_error_row():
    rows = parse_text_shard("/d/x.parquet", b"PAR1 this is not parquet PAR1")
    assert len(rows) == 1 and "not a readable Parquet file" in rows[0]["error"]


def test_speaker_manifests_csv_parquet_and_bad_records(tmp_path):
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(2400, np.float32), 24_000, format="FLAC")
    flac = buffer.getvalue()
    csv_rows = parse_speaker_shard(
        "s3://voices/set/speakers.csv",
        '\ufeffspeaker,audio,text\nann,ann.ogg,hi\nbob,"never closed\nbad name!,x.wav,t\n'.encode(),
    )
    assert csv_rows[0]["speaker"] == "ann" and csv_rows[0]["audio_path"] == "s3://voices/set/ann.ogg"
    assert csv_rows[0]["error"] is None
    assert "malformed CSV record" in csv_rows[1]["error"]
    assert "speaker name must be" in csv_rows[2]["error"]

    table = pa.table({"speaker": ["cat", "dan"], "audio": [flac, None], "text": ["t", "t"]})
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    pq_rows = parse_speaker_shard("/v/speakers.parquet", buf.getvalue().to_pybytes())
    assert pq_rows[0]["audio_bytes"] == flac and pq_rows[0]["error"] is None
    assert "has no audio" in pq_rows[1]["error"]

    json_rows = parse_speaker_shard("/v/s.jsonl", b'[1, 2]\n{"speaker": "eve", "audio": "/abs/eve.mp3"}\n')
    assert "expected an object, got list" in json_rows[0]["error"]
    assert json_rows[1]["audio_path"] == "/abs/eve.mp3"
    assert json.dumps(json_rows[1]["text"]) == '""'


def test_a_null_or_empty_speaker_takes_the_job_default():
    from actors.engine.sampling import SamplingParams
    from actors.requests import request_from_fields

    def speaker_of(fields: dict) -> str | None:
        return request_from_fields("a.jsonl:1", "a", {"text": "hi", **fields}, SamplingParams(), "seed:7", True).speaker

    assert speaker_of({}) == "seed:7"
    assert speaker_of({"speaker": None}) == "seed:7"
    assert speaker_of({"speaker": ""}) == "seed:7"
    assert speaker_of({"speaker": "seed:3"}) == "seed:3"


def test_discovery_reads_any_case_compressed_shards_and_symlinked_folders_and_reports_the_rest(tmp_path):
    """Files that were skipped without a word: UPPER.JSONL, texts.jsonl.gz and files under a symlinked sub-folder.
    A `**` glob over a link loop read one file 41 times; now each real file is read once. What is not read is a
    problem naming the file and why."""
    import bz2
    import gzip
    import os

    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (root / "UPPER.JSONL").write_text('{"id": "u", "text": "x"}\n')
    (root / "texts.jsonl.gz").write_bytes(gzip.compress(b'{"id": "g", "text": "y"}\n'))
    (root / "sub" / "t.CSV.bz2").write_bytes(bz2.compress(b"id,text\nb,z\n"))
    (root / "notes.md").write_text("# not a shard\n")
    (tmp_path / "elsewhere" / "linked.txt").write_text("through a link\n")
    os.symlink(tmp_path / "elsewhere", root / "linked")
    os.symlink(root, root / "sub" / "loop")  # a link back up: a walk or a ** glob would never end or repeat
    expected = sorted(str(root / n) for n in ("UPPER.JSONL", "texts.jsonl.gz", "sub/t.CSV.bz2", "linked/linked.txt"))
    for spec in (str(root), str(root / "**")):
        files, problems, _ = expand_paths([spec], TEXT_EXTENSIONS)
        assert sorted(files) == expected, spec
        assert len(problems) == 1 and problems[0].startswith(f"{root}/notes.md: not read: unknown shard format")
    rows = [r for f in expected for r in parse_text_shard(f, open(f, "rb").read())]
    assert sorted((r["id"], r["text"]) for r in rows if r["id"] in ("u", "g", "b")) == [
        ("b", "z"), ("g", "y"), ("u", "x")
    ]  # fmt: skip
    assert [r["text"] for r in rows if r["source"].endswith("linked.txt:1")] == ["through a link"]
    assert all(r["error"] is None for r in rows)


def test_a_broken_compressed_shard_is_one_error_row():
    rows = parse_text_shard("/d/a.jsonl.gz", b"not gzip at all")
    assert len(rows) == 1 and rows[0]["source"] == "/d/a.jsonl.gz" and "not readable as gzip" in rows[0]["error"]


def test_jsonl_with_a_byte_order_mark_keeps_its_first_row():
    rows = parse_text_shard(
        "/d/a.jsonl", "\ufeff".encode() + b'{"id": "first", "text": "x"}\n{"id": "b", "text": "y"}\n'
    )
    assert [(r["id"], r["error"]) for r in rows] == [("first", None), ("b", None)]


def test_undecodable_and_unencodable_values_fail_their_row_alone():
    """A Parquet string column with invalid UTF-8 (UnicodeDecodeError killed the parse) and a JSONL text with a lone
    surrogate (valid JSON; UnicodeEncodeError killed the TTS stage) each fail one row."""
    good, bad = b"fine text", b"caf\xe9 au lait"
    table = pa.table({"id": ["a", "b", "c"], "text": pa.array([good, bad, good], pa.binary()).view(pa.string())})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    rows = parse_text_shard("/d/t.parquet", buffer.getvalue())
    assert [(r["id"], r["text"]) for r in rows][::2] == [("a", "fine text"), ("c", "fine text")]
    assert rows[1]["source"] == "/d/t.parquet:row1" and "invalid UTF-8" in rows[1]["error"]
    lines = b'{"id": "s", "text": "a\\ud800b"}\n{"id": "f", "text": "ok", "speaker": "\\udfff"}\n{"id": "ok", "text": "x"}\n'
    rows = parse_text_shard("/d/s.jsonl", lines)
    assert "unpaired surrogate" in rows[0]["error"] and rows[0]["text"] is None
    assert "unpaired surrogate" in rows[1]["error"]
    assert rows[2]["error"] is None
    for row in rows:  # every row can become Arrow (which encodes to UTF-8)
        pa.Table.from_pylist([row])


def test_rows_without_ids_get_ids_from_their_content_stable_across_files_and_lines():
    """As .txt lines do: CSV and Parquet exports often carry no id column. Absent, null and empty ids all count as
    none and the row's id is derived from what it says (a slug of its text and a digest), so it survives a renamed
    or moved shard and a line inserted above it; an id of the wrong type is still an error."""
    jsonl = (
        b'{"text": "A b!"}\n{"id": null, "text": "b"}\n{"id": "", "text": "c", "seed": 3}\n{"id": ["x"], "text": "d"}\n'
    )
    rows = parse_text_shard("/d/no-ids.jsonl", jsonl)
    assert [r["id"][:-13] for r in rows[:3]] == ["a-b", "b", "c"] and rows[3]["id"] is None
    assert all(r["derived"] for r in rows[:3]) and rows[3]["key"] == "@/d/no-ids.jsonl:4"
    assert "id must be a string or an integer" in rows[3]["error"]
    moved = parse_text_shard("/elsewhere/renamed.jsonl", b"\n" + jsonl)  # another name, a line inserted above
    assert [r["id"] for r in moved] == [r["id"] for r in rows]
    reseeded = parse_text_shard("/d/no-ids.jsonl", jsonl.replace(b'"seed": 3', b'"seed": 4'))
    assert reseeded[2]["id"] != rows[2]["id"]  # what the row says is part of its id
    csv_rows = parse_text_shard("/d/e.csv", b"text,chapter\nhello,1\nworld,2\n")
    txt_rows = parse_text_shard("/d/e.txt", b"hello\n\nworld\n")
    assert [r["id"] for r in csv_rows] == [r["id"] for r in txt_rows]  # a user column changes nothing spoken
    assert all(r["error"] is None for r in csv_rows)
    buffer = io.BytesIO()
    pq.write_table(pa.table({"text": ["hello", "world"]}), buffer)
    assert [r["id"] for r in parse_text_shard("/d/e.parquet", buffer.getvalue())] == [r["id"] for r in txt_rows]


def test_ids_that_differ_only_in_case_are_duplicates():
    """`A` and `a` name one audio file on a case-insensitive store: the later row is a duplicate-id error."""
    from pipeline.inputs import identity_fixups

    ids = pa.chunked_array([["A", "b", "a", "B", "c"]])
    sources = pa.chunked_array([["f:1", "f:2", "f:3", "g:1", "g:2"]])
    duplicates = {s: f["error"] for s, f in identity_fixups(ids, sources, pa.chunked_array([[False] * 5])).items()}
    assert sorted(duplicates) == ["f:3", "g:1"]
    assert "differs from id 'A' (first seen at f:1) only in case" in duplicates["f:3"]
    assert "differs from id 'b' (first seen at f:2) only in case" in duplicates["g:1"]


def test_parts_are_named_by_their_rows_keys_and_digests():
    """A retried block (the same rows in any order) rewrites its own part; blocks of other rows, or of the same keys
    with other digests (an edited row), never share a name."""
    from pipeline.parts import part_name

    assert part_name(["k1", "k2"], ["d1", "d2"]) == part_name(["k2", "k1"], ["d2", "d1"])
    assert part_name(["k1", "k2"], ["d1", "d2"]) != part_name(["k1", "k2"], ["d1", "d3"])
    assert part_name(["@a.jsonl:1"], ["d"]) != part_name(["@a-copy.jsonl:1"], ["d"])


def test_synth_and_the_job_give_a_row_without_an_id_the_same_id(tmp_path):
    """`raytts synth` (read_jsonl) and `raytts run` (parse_text_shard) read the same file the same way: BOM dropped,
    rows without ids named by their content, lone surrogates an error."""
    from pipeline.inputs import read_jsonl

    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "no id."}\n{"id": "x", "text": "a\\ud800"}\n{"id": "y", "text": "ok."}\n')
    synth = list(read_jsonl(path))
    job = parse_text_shard(str(path), path.read_bytes())
    assert [(r.id, r.error is None) for r in synth] == [(r["id"], r["error"] is None) for r in job]
    assert [r.error is None for r in synth] == [True, False, True] and synth[0].id.startswith("no-id-")


@pytest.mark.parametrize(
    "line", ['r{i},"hello" world {i}\n', 'r{i},"hello world {i}\n', 'r{i},a""b"c\n', 'r{i},"x\n"y",z"w\n']
)
def test_dirty_csv_quoting_is_read_in_linear_work(line):
    """A quote left open or closed mid-field on every line made the reader re-read the rest of the file after each
    error (160k lines: 75 s). Each line is now fed to the reader a bounded number of times, and every line is one
    record or one error naming it."""
    lines = 4000
    text = "id,text\n" + "".join(line.format(i=i) for i in range(lines))
    work: list[int] = []
    records = list(csv_records(text, work))
    physical = text.count("\n")
    assert sum(work) <= 3 * physical, (sum(work), physical)
    assert records[-1][0] <= physical and len(records) >= lines // 2


def test_an_existing_path_with_glob_characters_is_taken_literally(tmp_path):
    """`take [2].jsonl` names that file; as a glob it matched `take 2.jsonl` and the named file was never read."""
    (tmp_path / "take [2].jsonl").write_text('{"id": "named", "text": "x"}\n')
    (tmp_path / "take 2.jsonl").write_text('{"id": "other", "text": "y"}\n')
    files, problems, _ = expand_paths([str(tmp_path / "take [2].jsonl")], TEXT_EXTENSIONS)
    assert files == [str(tmp_path / "take [2].jsonl")] and problems == []
    files, _, _ = expand_paths([str(tmp_path / "take [0-9].jsonl")], TEXT_EXTENSIONS)  # no such file: a glob
    assert files == [str(tmp_path / "take 2.jsonl")]


def test_the_output_inside_an_input_folder_is_never_read_as_input(tmp_path):
    """Its parts (with id and text columns), manifest and report were read back as input on every re-run."""
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.jsonl").write_text('{"id": "a", "text": "x"}\n')
    out = tmp_path / "texts" / "out"
    (out / "parts").mkdir(parents=True)
    (out / "manifest.jsonl").write_text('{"id": "a"}\n')
    (out / "parts" / "p.parquet").write_bytes(b"PAR1")
    (out / "audio").mkdir()
    (out / "audio" / "a.flac").write_bytes(b"fLaC")
    files, problems, excluded = expand_paths([str(tmp_path / "texts")], TEXT_EXTENSIONS, exclude=str(out))
    assert files == [str(tmp_path / "texts" / "a.jsonl")] and problems == []
    assert sorted(excluded) == sorted(str(p) for p in out.rglob("*") if p.is_file())
    _, problems, _ = expand_paths([str(out / "manifest.jsonl")], TEXT_EXTENSIONS, exclude=str(out))
    assert problems == [
        f"{out / 'manifest.jsonl'}: not read: it lies in the job's output {out}; point the input elsewhere"
    ]


def test_an_id_ending_in_a_newline_is_refused():
    """`^...$` matched before a trailing newline, so the id `x\\n` passed and named the file `x\\n.flac`."""
    from actors.validation import RequestError, validate_id

    with pytest.raises(RequestError, match="not a safe file name"):
        validate_id("x\n")
    rows = parse_text_shard("/d/a.jsonl", b'{"id": "x\\n", "text": "t"}\n')
    assert rows[0]["id"] is None and "not a safe file name" in rows[0]["error"]


def test_another_jobs_output_in_an_input_folder_is_not_read(tmp_path):
    """A folder walk met an earlier job's output (`texts/old-run/`): its parts (with id and text columns) would be
    synthesised again as input, its manifest and settings read as broken rows."""
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.jsonl").write_text('{"id": "a", "text": "x"}\n')
    old = tmp_path / "texts" / "old-run"
    (old / "parts").mkdir(parents=True)
    (old / "_settings").mkdir()
    (old / "_report.json").write_text('{"status": "finished"}\n')
    (old / "_settings" / "abc.json").write_text("{}\n")
    (old / "parts" / "p.parquet").write_bytes(b"PAR1")
    (old / "manifest.jsonl").write_text('{"id": "a"}\n')
    lookalike = tmp_path / "texts" / "notes"  # a `_report.json` alone does not make a folder an output
    lookalike.mkdir()
    (lookalike / "_report.json").write_text('{"text": "kept"}\n')
    files, problems, excluded = expand_paths([str(tmp_path / "texts")], TEXT_EXTENSIONS)
    assert files == [str(tmp_path / "texts" / "a.jsonl"), str(lookalike / "_report.json")] and problems == []
    assert sorted(excluded) == sorted(str(p) for p in old.rglob("*") if p.is_file())
