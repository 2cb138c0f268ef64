"""`raytts synth` as a user runs it: real CLI process, a JSONL file full of bad rows, Parquet out."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf


def _line(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode() + b"\n"


@pytest.fixture(scope="module")
def synth_run(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("synth")
    t = np.arange(16_000) / 16_000
    sf.write(work / "ref16k.wav", (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32), 16_000)
    sf.write(work / "empty.wav", np.zeros(0, dtype=np.float32), 24_000)
    long_text = " ".join(
        f"This is sentence {w} of a long paragraph." for w in ["one", "two", "three", "four", "five"] * 6
    )
    lines = [
        _line({"id": "good-en", "text": "Hello world, this is raytts."}),  # 1
        _line({"id": "good-zh", "text": "你好，欢迎使用语音合成。", "speaker": "seed:1234", "seed": 3}),  # 2
        _line({"id": "empty", "text": ""}),  # 3
        _line({"id": "blank", "text": "   \t "}),  # 4
        _line({"id": "huge", "text": "a" * 100_000}),  # 5
        b'{"id": "bad-utf8", "text": "caf\xe9 \xff"}\n',  # 6
        _line({"id": "bad-speaker", "text": "hello there", "speaker": "definitely not a speaker"}),  # 7
        _line({"id": ["list", "id"], "text": "hello"}),  # 8
        _line({"id": "good-en", "text": "a duplicate id"}),  # 9
        _line({"id": "../x", "text": "path traversal"}),  # 10
        _line({"id": "bad-seed", "text": "hello", "seed": "abc"}),  # 11
        _line({"id": "punctuation-only", "text": "?!"}),  # 12
        b"this is not json\n",  # 13
        _line({"id": "long", "text": long_text}),  # 14
        _line(
            {
                "id": "ref",
                "text": "Say it like the reference.",
                "reference_audio": "ref16k.wav",
                "reference_text": "a tone",
            }
        ),  # 15
        _line({"id": "ref-missing", "text": "hello", "reference_audio": "nope.wav"}),  # 16
        _line({"id": "ref-empty", "text": "hello", "reference_audio": "empty.wav"}),  # 17
        _line({"id": "bad-codes", "text": "hello", "reference_codes": "garbage"}),  # 18
        _line({"id": 42, "text": "integer ids are fine", "temperature": 0.5}),  # 19
        _line({"id": "digits-inside", "text": "Call me at 555-1234 [uv_break] today?", "refine": False}),  # 20
        b"\n",  # blank lines are skipped
    ]
    (work / "in.jsonl").write_bytes(b"".join(lines))
    env = {**os.environ, "RAYTTS_CACHE": str(work / "cache")}
    cmd = [
        sys.executable, "-m", "jobs.cli", "synth", "--model", str(tiny_checkpoint), "--input", str(work / "in.jsonl"),
        "--output", str(work / "out"), "--save-codes", "--max-new-tokens", "60", "--max-segment-tokens", "40",
        "--device", "cpu", "--max-batch-size", "8",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    table = pq.read_table(work / "out" / "part-00000.parquet").to_pylist()
    report = json.loads((work / "out" / "_report.json").read_text())
    return proc, table, report


def test_every_input_line_yields_one_row_in_order(synth_run):
    proc, rows, report = synth_run
    assert proc.returncode == 1, proc.stderr
    assert len(rows) == 20
    assert report["rows"] == 20
    assert [r["id"] for r in rows[:2]] == ["good-en", "good-zh"]
    assert rows[18]["id"] == "42"


EXPECTED_ERRORS = {
    3: "text is empty",
    4: "text is empty",
    5: "100000 characters",
    6: "invalid UTF-8",
    7: "speaker string",
    8: "id must be a string or an integer",
    9: "duplicate id 'good-en'",
    10: "not a safe file name",
    11: "seed must be a number",
    12: "nothing speakable",
    13: "not valid JSON",
    16: "could not be read",
    17: "reference audio is empty",
    18: "reference prompt",
}


def test_bad_rows_carry_an_error_naming_the_line_and_reason(synth_run):
    proc, rows, report = synth_run
    for line, fragment in EXPECTED_ERRORS.items():
        row = rows[line - 1]
        assert row["error"] is not None, f"line {line} should have failed"
        assert f"in.jsonl:{line}" in row["error"], row["error"]
        assert fragment in row["error"], row["error"]
        assert row["audio"] is None
    assert report["failed"] == len(EXPECTED_ERRORS)
    assert report["ok"] == 20 - len(EXPECTED_ERRORS)
    printed = [line for line in proc.stderr.splitlines() if line.startswith("FAILED ")]
    assert len(printed) == len(EXPECTED_ERRORS)
    repeated = [line for line in printed if max(Counter(re.findall(r"in\.jsonl:\d+", line)).values()) != 1]
    assert repeated == []  # each row's location once (it printed "in.jsonl:8: in.jsonl:8: ...")
    assert rows[5]["id"] == "bad-utf8", "the id of an undecodable line is salvaged when possible"


def test_good_rows_hold_playable_flac_of_the_right_length(synth_run):
    _, rows, _ = synth_run
    good = [r for r in rows if r["error"] is None]
    assert {r["id"] for r in good} == {"good-en", "good-zh", "long", "ref", "42", "digits-inside"}
    for row in good:
        audio, rate = sf.read(io.BytesIO(row["audio"]["bytes"]), dtype="float32")
        assert rate == row["sample_rate"] == 24_000
        assert audio.shape == (row["num_samples"],)
        assert row["audio"]["path"] == f"{row['id']}.flac"
        codes = np.asarray(row["codes"])
        assert codes.shape[1] == 4 and codes.min() >= 0 and codes.max() < 625
        # each segment of T steps gives 512*T - 256 samples
        assert row["num_samples"] == 512 * codes.shape[0] - 256 * row["segments"]
        assert row["duration_s"] == pytest.approx(row["num_samples"] / 24_000)


def test_synth_writes_a_listening_page_with_its_rows_audio_embedded(synth_run):
    """`raytts synth` ends with OUTPUT/report.html (pipeline.listening): its rows' audio is only in the Parquet,
    so every row shown plays from the page itself; the failed rows are listed with their errors."""
    from pathlib import Path

    proc, rows, _ = synth_run
    said = [line for line in proc.stderr.splitlines() if line.startswith("listening page: ")]
    assert said, proc.stderr[-2000:]
    html = Path(said[-1].split(": ", 1)[1]).read_text()
    good = [r for r in rows if r["error"] is None]
    assert html.count("data:audio/flac;base64,") == len(good)  # 6 rows: each flagged or in the clean sample
    assert "punctuation-only" in html and 'id="failures"' in html


def test_long_text_is_split_and_joined_per_row(synth_run):
    _, rows, _ = synth_run
    long_row = next(r for r in rows if r["id"] == "long")
    assert long_row["segments"] >= 3
    assert next(r for r in rows if r["id"] == "good-en")["segments"] == 1


def test_row_fields_are_reported(synth_run):
    _, rows, _ = synth_run
    zh = next(r for r in rows if r["id"] == "good-zh")
    assert zh["speaker"] == "seed:1234" and zh["seed"] == 3
    assert next(r for r in rows if r["id"] == "good-en")["seed"] == 0


def test_rows_say_what_was_spoken_and_what_was_dropped(synth_run):
    """Nothing is dropped silently: each ok row carries the text the model was asked to say and the characters the
    front end deleted (control tags kept); the report counts the rows that lost any; error rows carry neither."""
    _, rows, report = synth_run
    row = next(r for r in rows if r["id"] == "digits-inside")  # numbers read (the default `full` mode), `?` deleted
    assert row["spoken_text"] == ("Call me at five five five, one two three four [uv_break] today")
    assert row["dropped_chars"] == "?"
    # Rows that went through the refine-text stage (on by default) say the refined text: the random model's
    # refinement, not the row's own words.
    en = next(r for r in rows if r["id"] == "good-en")
    assert en["spoken_text"] and en["spoken_text"] != "Hello world, this is raytts." and en["dropped_chars"] == ""
    zh = next(r for r in rows if r["id"] == "good-zh")
    assert zh["spoken_text"] and zh["spoken_text"] != "你好，欢迎使用语音合成。" and zh["dropped_chars"] == ""
    assert all(r["spoken_text"] is None and r["dropped_chars"] is None for r in rows if r["error"])
    assert report["dropped_chars_rows"] == 1


def test_missing_input_file_is_a_usage_error(tmp_path):
    from jobs.cli import main

    assert main(["synth", "--input", str(tmp_path / "none.jsonl"), "--output", str(tmp_path / "o")]) == 2


def test_max_new_tokens_above_the_default_reservation_is_honoured(tiny_checkpoint, tmp_path, monkeypatch):
    """--max-new-tokens beyond 2048 used to fail every row: the replica reserved only 2048 per slot."""
    from actors.settings import EngineSettings, SamplingSettings
    from jobs.synth import SynthOptions, run_synth

    monkeypatch.setenv("RAYTTS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "in.jsonl").write_text(json.dumps({"id": "a", "text": "hello there."}) + "\n")
    options = SynthOptions(
        model=str(tiny_checkpoint), input=tmp_path / "in.jsonl", output=tmp_path / "out",
        engine=EngineSettings(device="cpu", max_slots=16), sampling=SamplingSettings(max_new_tokens=2500, seed=1),
    )  # fmt: skip
    status, report = run_synth(options)
    assert status == 0, report.failures
    assert report.ok == 1


def test_each_slot_reserves_what_the_rows_ask_for(tiny_checkpoint, tmp_path, monkeypatch):
    """`raytts synth` reads every row first, so a slot reserves the most any row may generate (--max-new-tokens, or
    a row's own larger max_new_tokens), not a fixed 2048: short jobs fit more rows in the same memory. A row asking
    beyond what the model's positions allow fails alone; the report shows the plan."""
    from actors.settings import SYNTH_MAX_RESERVE, SYNTH_ROW_RESERVE, EngineSettings, RefineSettings, SamplingSettings
    from jobs.synth import SynthOptions, reserved_new_tokens, run_synth
    from pipeline.inputs import InputRow

    rows = [InputRow("a:1", "a", {"max_new_tokens": 300}), InputRow("a:2", "b", {"max_new_tokens": "x"})]
    assert reserved_new_tokens(rows, 200) == 300
    # one row alone never makes the plan larger than synth's old fixed reservation; --max-new-tokens may
    assert reserved_new_tokens([InputRow("a:1", "a", {"max_new_tokens": 10**9})], 200) == SYNTH_ROW_RESERVE
    assert reserved_new_tokens([], 3000) == 3000 and reserved_new_tokens([], 10**6) == SYNTH_MAX_RESERVE
    assert reserved_new_tokens([InputRow("a:1", "a", {"max_new_tokens": 900}, error="bad")], 200) == 200

    monkeypatch.setenv("RAYTTS_CACHE", str(tmp_path / "cache"))
    lines = [{"id": "short", "text": "hello there."}, {"id": "huge", "text": "hello.", "max_new_tokens": 10**9}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    options = SynthOptions(
        model=str(tiny_checkpoint), input=tmp_path / "in.jsonl", output=tmp_path / "out",
        engine=EngineSettings(device="cpu", max_slots=4), sampling=SamplingSettings(max_new_tokens=40),
    )  # fmt: skip
    status, report = run_synth(options)
    assert status == 1 and report.ok == 1
    assert f"exceeds this replica's {SYNTH_ROW_RESERVE}" in report.failures[0]["error"]
    assert report.engine["slot_tokens"] == 640 + SYNTH_ROW_RESERVE and report.engine["slots"] >= 1
    assert report.engine["budget_source"].startswith("0.5 x ")  # no budget given: from this machine's memory

    (tmp_path / "in.jsonl").write_text(json.dumps(lines[0]) + "\n")
    status, report = run_synth(options)
    # the refine-text stage (on by default) may generate upstream's 384 tokens: the slot holds them
    assert status == 0 and report.engine["slot_tokens"] == 640 + 384
    options.refine = RefineSettings(enabled=False)
    status, report = run_synth(options)
    assert status == 0 and report.engine["slot_tokens"] == 640 + 40
