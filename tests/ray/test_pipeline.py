"""The offline job on real Ray (local), with a real S3 server (SeaweedFS) on loopback and the tiny model."""

from __future__ import annotations

import io
import json
import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from actors.checkpoint import resolve
from actors.speaker import encode_prompt
from jobs.cli import print_failures
from pipeline.config import JobConfig
from pipeline.graph import stage_settings
from pipeline.job import run_job
from pipeline.parts import read_outputs
from tests.support.jobdata import txt_ids, write_speakers, write_text_shards

pytestmark = pytest.mark.timeout(900)


def _config(
    tiny_checkpoint: Path, texts: list[str], output: str, speakers: list[str] | None = None, **actors
) -> JobConfig:
    return JobConfig.model_validate(
        {
            "model": str(tiny_checkpoint),
            "inputs": {"text": texts, "speakers": speakers or []},
            "output": {"path": output, "save_codes": False},
            "sampling": {"max_new_tokens": 48, "temperature": 0.5},
            "engine": {"device": "cpu", "budget_mib": 64, "max_slots": 32},
            "actors": {"size": 1, "num_gpus": 0, "num_cpus": 1, "batch_size": 16, **actors},
        }
    )


def test_200_rows_four_formats_and_three_speakers_to_s3(local_ray, s3_server, tiny_checkpoint, tmp_path):
    s3_server.client().create_bucket(Bucket="tts-out")
    speakers = ["alice", "bob", "carol"]
    speaker_manifest = write_speakers(tmp_path / "speakers", speakers)
    expected = write_text_shards(tmp_path / "texts", 200, speakers)  # 13 blocks of 16 rows over one actor
    expected += txt_ids(tmp_path / "texts" / "c.txt", 50)
    config = _config(tiny_checkpoint, [str(tmp_path / "texts")], "s3://tts-out/job1", [str(speaker_manifest)])
    report = run_job(config)
    assert report.rows == 200 and report.failed == 0, report.failures[:3]
    assert report.exit_status == 0

    fs = pafs.S3FileSystem(endpoint_override=s3_server.endpoint, scheme="http", access_key=s3_server.access_key,
                           secret_key=s3_server.secret_key, region="us-east-1")  # fmt: skip
    table = read_outputs("s3://tts-out/job1", ["id", "audio", "num_samples", "speaker", "error"])
    ids = table.column("id").to_pylist()
    assert Counter(ids) == Counter(expected), "every input id exactly once"
    objects = {info.path for info in fs.get_file_info(pafs.FileSelector("tts-out/job1/audio", recursive=True))}
    assert objects == {f"tts-out/job1/audio/{i}.flac" for i in expected}
    # audio objects equal the bytes in the Parquet rows and decode to num_samples samples
    rows = table.to_pylist()
    for row in rows[::37]:
        with fs.open_input_file(f"tts-out/job1/audio/{row['id']}.flac") as f:
            data = f.read()
        assert data == row["audio"]["bytes"]
        audio, rate = sf.read(pa.BufferReader(data), dtype="float32")
        assert rate == 24_000 and audio.shape == (row["num_samples"],)
    assert {r["speaker"] for r in rows} >= set(speakers), "reference speakers were used"
    with fs.open_input_stream("tts-out/job1/manifest.jsonl") as f:
        lines = [json.loads(line) for line in f.read().decode().splitlines()]
    assert sorted(line["id"] for line in lines) == sorted(expected)
    assert all(
        line["audio"] == f"s3://tts-out/job1/audio/{line['id']}.flac" and line["error"] is None for line in lines
    )


def test_inputs_from_object_storage_globs_and_relative_speaker_audio(local_ray, s3_server, tiny_checkpoint, tmp_path):
    """Text shards named by s3:// globs, and reference speakers from the bucket in every manifest and audio
    format: a JSONL manifest with relative wav paths, a CSV manifest with an ogg and an mp3 file, a Parquet
    manifest with flac bytes. Relative paths resolve in the same bucket; a missing s3:// shard is a reported
    problem, not a crash."""
    from tests.support.jobdata import voice

    client = s3_server.client()
    client.create_bucket(Bucket="tts-in")
    names = ["ann", "ben", "cat", "dan", "eve"]
    voices = tmp_path / "in" / "voices"
    write_speakers(voices, names[:2])
    sf.write(voices / "cat.ogg", voice(1.2, 22_050, 180), 22_050, format="OGG", subtype="VORBIS")
    sf.write(voices / "dan.mp3", voice(1.2, 24_000, 140), 24_000, format="MP3")
    (voices / "more.csv").write_text("speaker,audio,text\ncat,cat.ogg,reference cat\ndan,dan.mp3,reference dan\n")
    flac = io.BytesIO()
    sf.write(flac, voice(1.2, 16_000, 200), 16_000, format="FLAC")
    pq.write_table(pa.table({"speaker": ["eve"], "audio": [flac.getvalue()], "text": ["reference eve"]}),
                   voices / "bytes.parquet")  # fmt: skip
    expected = write_text_shards(tmp_path / "in" / "texts", 40, names)
    (tmp_path / "in" / "texts" / "c.txt").unlink()  # .txt ids hash the shard path: keep the check to real ids
    with open(tmp_path / "in" / "texts" / "voices.jsonl", "w") as f:  # one row per reference speaker
        for name in names:
            f.write(json.dumps({"id": f"by-{name}", "text": "hello there.", "speaker": name}) + "\n")
            expected.append(f"by-{name}")
    s3_server.upload_dir("tts-in", "job", tmp_path / "in")
    config = _config(
        tiny_checkpoint,
        ["s3://tts-in/job/texts/*.jsonl", "s3://tts-in/job/texts/[bd].*", "s3://tts-in/job/texts/missing.jsonl"],
        str(tmp_path / "out"),
        ["s3://tts-in/job/voices/"],
    )
    report = run_job(config)
    assert report.problems == ["s3://tts-in/job/texts/missing.jsonl: no such object or prefix"]
    assert report.failed == 0, report.failures[:3]
    table = read_outputs(str(tmp_path / "out"), ["id", "speaker", "error"])
    assert Counter(table.column("id").to_pylist()) == Counter(expected)
    spoken = {r["id"]: r["speaker"] for r in table.to_pylist()}
    assert all(spoken[f"by-{name}"] == name for name in names)


def test_rows_without_ids_keep_their_keys_when_the_job_folder_moves(local_ray, tiny_checkpoint, tmp_path):
    """A job folder (YAML + shards) run, then run again (finished) from a copy elsewhere, as `ray job submit
    --working-dir` unpacks it into a new folder every cluster session: the re-run finds every row finished, .txt
    lines and JSONL rows without ids included, instead of redoing them under new keys."""
    import shutil

    import yaml

    first = tmp_path / "session1"
    (first / "texts").mkdir(parents=True)
    (first / "texts" / "lines.txt").write_text("hello there.\ngood morning.\n")
    (first / "texts" / "rows.jsonl").write_text('{"text": "no id here."}\n{"text": "nor here."}\n')
    job = _config(tiny_checkpoint, ["texts"], str(tmp_path / "out")).model_dump(exclude_none=True)
    (first / "job.yaml").write_text(yaml.safe_dump(job))
    assert run_job(JobConfig.load(first / "job.yaml")).this_run == 4
    second = tmp_path / "session2"
    shutil.copytree(first, second)
    report = run_job(JobConfig.load(second / "job.yaml"))
    assert (report.this_run, report.skipped_finished, report.rows) == (0, 4, 4)


BAD_ROWS = [
    {"id": "empty", "text": ""},
    {"id": "blank", "text": "   "},
    {"id": "huge", "text": "x" * 100_000},
    {"id": "ghost", "text": "who is this", "speaker": "nobody"},
    {"id": "broken-voice", "text": "hello", "speaker": "corrupt"},
    {"id": "silent-voice", "text": "hello", "speaker": "silent"},
    {"id": "low-rate-voice", "text": "hello", "speaker": "lowrate"},
    {"id": "dup", "text": "first"},
    {"id": "../x", "text": "path traversal"},
    {"id": "typed", "text": "hello", "seed": "abc"},
    {"id": "row-audio", "text": "hello", "reference_audio": "voice.wav"},
    {"id": "row-codes-bad", "text": "hello", "reference_codes": "not a prompt"},
]


def test_bad_inputs_each_get_an_error_and_the_job_completes(local_ray, tiny_checkpoint, tmp_path, capsys):
    folder = tmp_path / "texts"
    folder.mkdir()
    with open(folder / "bad.jsonl", "wb") as f:
        for row in BAD_ROWS:
            f.write(json.dumps(row).encode() + b"\n")
        f.write(b'{"id": "utf8", "text": "caf\xe9"}\n')
        f.write(json.dumps({"id": "good", "text": "a good row."}).encode() + b"\n")
        prompt = encode_prompt(np.arange(4 * 30, dtype=np.int64).reshape(4, 30) % 50)
        f.write(json.dumps({"id": "row-codes", "text": "hello", "reference_codes": prompt, "speaker": None}).encode())
        f.write(b"\n")
    with open(folder / "more.jsonl", "w") as f:
        f.write(json.dumps({"id": "dup", "text": "second"}) + "\n")
    pq.write_table(pa.table({"id": ["pq-typed"], "text": [12345]}), folder / "typed.parquet")
    speakers = tmp_path / "speakers"
    speakers.mkdir()
    (speakers / "corrupt.wav").write_bytes(b"RIFF not really a wav file")
    sf.write(speakers / "silent.wav", np.zeros(0, dtype=np.float32), 24_000)
    sf.write(speakers / "lowrate.wav", np.zeros(4000, dtype=np.float32), 4_000)
    with open(speakers / "speakers.jsonl", "w") as f:
        for name in ("corrupt", "silent", "lowrate"):
            f.write(json.dumps({"speaker": name, "audio": f"{name}.wav", "text": "t"}) + "\n")
        f.write(json.dumps({"speaker": "no spaces allowed", "audio": "x.wav", "text": "t"}) + "\n")
    config = _config(
        tiny_checkpoint,
        [str(folder), str(tmp_path / "missing-shard.jsonl")],
        str(tmp_path / "out"),
        [str(speakers / "speakers.jsonl")],
    )
    report = run_job(config)
    assert report.exit_status == 1
    assert any("missing-shard.jsonl: no such file or folder" in p for p in report.problems)
    assert any("speakers.jsonl:4: speaker name must be" in p for p in report.problems)  # a line naming no speaker
    assert any(p.startswith("speaker 'corrupt' unusable") for p in report.problems)
    rows = {r["source"]: r for r in read_outputs(str(tmp_path / "out"), ["id", "source", "error"]).to_pylist()}
    by_id = {r["id"]: r for r in rows.values() if r["id"]}
    expect = {
        "empty": "text is empty",
        "blank": "text is empty",
        "huge": "100000 characters",
        "ghost": "unknown speaker 'nobody'",
        "broken-voice": "speaker 'corrupt' is unusable",
        "silent-voice": "speaker 'silent' is unusable",
        "low-rate-voice": "too low",
        "typed": "seed must be a number",
        "row-audio": "reference_audio per row is not read by `raytts run`",
        "row-codes-bad": "reference prompt 'not a prompt'",
        "utf8": "invalid UTF-8",
        "pq-typed": None,
    }
    for row_id, fragment in expect.items():
        if fragment:
            assert fragment in (by_id[row_id]["error"] or ""), (row_id, by_id[row_id]["error"])
    assert "text must be a string" in by_id.get("pq-typed", {}).get("error", "") or any(
        "text must be a string" in (r["error"] or "") for r in rows.values()
    )
    dups = [r for r in rows.values() if r["id"] == "dup"]
    assert len(dups) == 2 and sum(1 for r in dups if r["error"] and "duplicate id 'dup'" in r["error"]) == 1
    assert any("not a safe file name" in (r["error"] or "") for r in rows.values())
    assert by_id["good"]["error"] is None
    assert by_id["row-codes"]["error"] is None  # a per-row upstream prompt string, as `raytts synth` takes
    assert report.rows == len(BAD_ROWS) + 5  # + utf8 + good + row-codes + second dup + parquet row
    # what `raytts run` prints for them: each row's location once (it printed "a.jsonl:62: a.jsonl:62: ...")
    capsys.readouterr()
    print_failures(report.failures, "report")
    printed = [line for line in capsys.readouterr().err.splitlines() if line.startswith("FAILED ")]
    assert len(printed) == min(20, report.failed) and report.failed > 5
    for line in printed:
        locations = Counter(re.findall(r"\S+\.(?:jsonl|parquet):(?:row)?\d+", line))
        assert locations and max(locations.values()) == 1, line


@pytest.mark.parametrize("audio_format", ["flac", "opus"])
def test_hugging_face_datasets_reads_the_output_as_audio(local_ray, tiny_checkpoint, tmp_path, audio_format):
    """`datasets` loads the Parquet parts, types `audio` as its Audio feature (from our schema metadata) and
    decodes it with no extra code, lossless (flac) or lossy (opus); the audio files hold the same bytes.

    The test extra pins `datasets` 3.x, whose Audio decoding uses soundfile: 4.x and later decode through
    torchcodec, whose PyPI wheels need a CUDA build of torch (libnvrtc), which these CPU-only machines lack. The
    Parquet layout (struct {bytes, path} + `huggingface` features metadata) is the same for every version.
    """
    datasets = pytest.importorskip("datasets")
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "t.txt").write_text("hello there.\n你好。\nthe quick brown fox.\n")
    config = _config(tiny_checkpoint, [str(texts)], str(tmp_path / "out"))
    config.output.audio_format = audio_format
    report = run_job(config)
    assert report.exit_status == 0
    files = sorted(str(p) for p in (tmp_path / "out" / "parts").glob("*.parquet"))
    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    assert set(ds["model"]) == {resolve(str(tiny_checkpoint)).model_id}  # source@sha256:... of the files used
    assert isinstance(ds.features["audio"], datasets.Audio)
    assert ds.features["audio"].sampling_rate == 24_000
    assert len(ds) == 3
    raw = ds.cast_column("audio", datasets.Audio(decode=False))
    for row, stored in zip(ds, raw, strict=True):
        decoded = row["audio"]
        assert decoded["sampling_rate"] == 24_000
        assert decoded["array"].shape == (row["num_samples"],)
        assert stored["audio"]["path"] == str(tmp_path / "out" / "audio" / f"{row['id']}.{audio_format}")
        assert Path(stored["audio"]["path"]).read_bytes() == stored["audio"]["bytes"]
        reference, rate = sf.read(io.BytesIO(stored["audio"]["bytes"]), dtype="float32")
        assert rate == 24_000
        np.testing.assert_allclose(decoded["array"], reference, atol=1e-6)


def test_pandas_and_duckdb_read_the_parts_as_plain_columns(local_ray, tiny_checkpoint, tmp_path):
    """The Parquet parts are ordinary Parquet: pandas and duckdb read every column, audio bytes included."""
    import duckdb
    import pandas as pd

    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "t.jsonl").write_text('{"id": "a", "text": "hello."}\n{"id": "b", "text": ""}\n')
    assert run_job(_config(tiny_checkpoint, [str(texts)], str(tmp_path / "out"))).rows == 2
    parts = str(tmp_path / "out" / "parts")
    frame = pd.read_parquet(parts).set_index("id").sort_index()
    assert pd.isna(frame.loc["a", "error"]) and "text is empty" in frame.loc["b", "error"]
    audio = frame.loc["a", "audio"]
    assert sf.read(io.BytesIO(audio["bytes"]))[0].shape == (frame.loc["a", "num_samples"],)
    rows = duckdb.sql(
        f"select id, octet_length(audio.bytes), num_samples, duration_s from read_parquet('{parts}/*.parquet') "
        "where error is null"
    ).fetchall()
    assert len(rows) == 1 and rows[0][0] == "a" and rows[0][1] == len(audio["bytes"])
    assert rows[0][3] == pytest.approx(rows[0][2] / 24_000)


@pytest.mark.parametrize("fmt", ["flac", "wav", "ogg", "opus"])
def test_every_audio_format_decodes_to_its_stored_length(fmt):
    """Each output format decodes at 24 kHz to exactly the samples written (the `num_samples` column), whether fed
    int16 PCM (the offline job) or float32 (`raytts synth`); lossless formats give back the 16-bit samples exactly,
    lossy ones stay close to them."""
    from actors.audio import encode_audio

    t = np.arange(30_011) / 24_000  # an odd length: no frame or packet boundary to hide a trimming error
    audio = (0.4 * np.sin(2 * np.pi * 330 * t) * np.hanning(t.size)).astype(np.float32)
    pcm = np.round(audio * 32767).astype(np.int16)
    for source, tolerance in ((pcm, 0), (audio, 1)):  # libsndfile rounds float32 input to 16 bits
        decoded, rate = sf.read(pa.BufferReader(encode_audio(source, 24_000, fmt)), dtype="int16")
        assert rate == 24_000 and decoded.shape == pcm.shape
        if fmt in ("flac", "wav"):
            assert np.abs(decoded.astype(np.int32) - pcm).max() <= tolerance
        else:
            error = (decoded.astype(np.float64) - pcm) / 32767
            assert 10 * np.log10(np.sum((pcm / 32767) ** 2) / np.sum(error**2)) > 15


def test_cpu_stages_do_not_load_torch():
    """Parse, filter, store and write workers import only pipeline modules: loading torch there (~1.5 s of CPU per
    worker process) would take CPU from the engine actors on small nodes."""
    import subprocess
    import sys

    code = (
        "import sys; import pipeline.job, pipeline.store, pipeline.sources, pipeline.output, pipeline.inputs, pipeline.prepare; "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def _part_rows(ids: list[str], errors: list[str | None]) -> pa.Table:
    from pipeline.parts import RUN_SCHEMA

    n = len(ids)
    columns = {f.name: [None] * n for f in RUN_SCHEMA}
    columns.update(id=ids, key=ids, text=["t"] * n, source=[f"a.jsonl:{i + 1}" for i in range(n)], error=errors)
    return pa.Table.from_pydict(columns, schema=RUN_SCHEMA)


def test_a_retried_block_rewrites_its_own_part(tmp_path):
    """Ray Data may run a block twice (a store actor dies after writing): the part is named by its rows' keys, so
    the second write replaces the first instead of adding the rows again. Leftovers of killed writers are removed
    at the start of a run, never read as rows."""
    from pipeline.parts import read_outputs, write_part

    parts = tmp_path / "out" / "parts"
    first = write_part(_part_rows(["a", "b", "c"], [None] * 3), str(parts))
    again = write_part(_part_rows(["c", "a", "b"], [None] * 3), str(parts))  # same rows, other order
    other = write_part(_part_rows(["d"], [None]), str(parts))
    assert first == again != other
    assert sorted(p.name for p in parts.iterdir()) == sorted([Path(first).name, Path(other).name])
    (parts / ".0123.tmp").write_bytes(b"half a part")
    (parts / "part-truncated.parquet").write_bytes(b"PAR1 cut short")
    assert sorted(read_outputs(str(tmp_path / "out"), ["id"]).column("id").to_pylist()) == ["a", "b", "c", "d"]
    assert (parts / ".0123.tmp").exists(), "a plain read never deletes (a writer may still be running)"
    read_outputs(str(tmp_path / "out"), ["id"], clean=True)
    assert sorted(p.name for p in parts.iterdir()) == sorted([Path(first).name, Path(other).name])


def test_retry_failed_redoes_failed_rows_exactly_once(local_ray, tiny_checkpoint, tmp_path):
    texts = tmp_path / "texts"
    texts.mkdir()
    rows = [{"id": f"r{i}", "text": f"row number {i}."} for i in range(6)]
    rows[2]["speaker"] = "nobody"  # fails: no such reference speaker
    (texts / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    output = str(tmp_path / "out")
    first = run_job(_config(tiny_checkpoint, [str(texts)], output))
    assert (first.ok, first.failed) == (5, 1)

    del rows[2]["speaker"]  # the input is fixed; only the failed row is redone
    (texts / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = _config(tiny_checkpoint, [str(texts)], output).model_copy(update={"retry_failed": True})
    second = run_job(config)
    assert (second.rows, second.ok, second.failed, second.this_run, second.skipped_finished) == (6, 6, 0, 1, 5)
    table = read_outputs(output, ["id", "error"])
    assert Counter(table.column("id").to_pylist()) == Counter(r["id"] for r in rows)
    assert table.column("error").null_count == 6


def test_batches_in_flight_on_one_actor_share_its_engine_slots(local_ray, tiny_checkpoint, tmp_path):
    """Two 4-row calls run at once on the actor and fill its 8 slots together. Ray Data runs one call at a time
    per actor unless told otherwise: then at most 4 of the 8 slots are ever busy (occupancy <= 0.5), and with
    rows of mixed lengths every call would end with its slots draining."""
    texts = tmp_path / "texts"
    texts.mkdir()
    rows = [{"id": f"r{i}", "text": f"row number {i}.", "seed": i} for i in range(48)]
    (texts / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = _config(tiny_checkpoint, [str(texts)], str(tmp_path / "out"), batch_size=4, max_concurrent_batches=2)
    config.engine.max_slots = 8
    config.sampling.min_new_tokens = config.sampling.max_new_tokens = 24  # equal lengths: a full pool is exact
    report = run_job(config)
    assert (report.ok, report.failed) == (48, 0), report.failures[:3]
    [(worker, stats)] = report.workers.items()
    assert stats["rows"] == 48
    assert stats["occupancy"] > 0.7, f"{worker}: engine slots {stats['occupancy']:.0%} busy, calls did not overlap"
    engine = stats["engine"]  # the actor's latest engine accounting
    assert engine["max_rows_in_flight"] == 8 and engine["steps"] >= 6 * 24 and engine["preemptions"] == 0
    assert 0.5 < engine["attention_read_efficiency"] <= 1 and 0.5 < engine["kv_held_share"] <= 1


def test_an_actor_fed_fewer_rows_than_its_slots_says_so(tiny_checkpoint, caplog):
    """The engine stage warns when batch_size x max_concurrent_batches cannot fill the engine's slots (e.g. a GPU
    config with 344 slots fed 64-row calls). Built in-process: the constructor is what an actor runs."""
    import logging

    from actors.tts_stage import TTSStage

    def stage(batch_size: int, concurrent: int) -> None:
        config = _config(tiny_checkpoint, ["unused.jsonl"], "unused", batch_size=batch_size)
        config.actors.max_concurrent_batches = concurrent
        config.engine.max_slots = 16
        with caplog.at_level(logging.WARNING, logger="actors.tts_stage"):
            TTSStage(stage_settings(config).model_dump(), {}).engine.close()

    stage(batch_size=8, concurrent=2)
    assert "slots stay idle" not in caplog.text
    stage(batch_size=4, concurrent=2)
    assert "the engine has 16 slots but at most 8 rows reach it at once" in caplog.text
    assert "at least 8 slots stay idle" in caplog.text


def test_an_engine_that_dies_fails_the_rows_in_flight_and_is_rebuilt(tiny_checkpoint, tmp_path):
    """Fault injection into the real TTS stage (in-process, no Ray): the engine's step raises once, as a device
    error or a bug would. The rows in flight come back as error rows naming the cause, the stage rebuilds its
    engine, and the next batch is synthesised: the job goes on instead of dying on one bad step."""
    import asyncio

    from actors.tts_stage import TTSStage
    from pipeline.job import tokenizer_of
    from pipeline.prepare import prepare_rows

    config = _config(tiny_checkpoint, ["x"], str(tmp_path))
    stage = TTSStage(stage_settings(config).model_dump(), speakers={})
    first_engine = stage.engine

    def failing_step():
        raise RuntimeError("injected device error")

    stage.synthesizer.pump = failing_step
    rows = pa.table({
        "id": ["a", "b"], "text": ["hello there.", "good morning."], "source": ["t.jsonl:1", "t.jsonl:2"],
        "fields": ["{}", "{}"], "error": pa.array([None, None], pa.string()),
    })  # fmt: skip
    settings = {"speaker": None, "normalize": "full", "max_segment_tokens": 120, "max_chars": 1000, "references": {}}
    rows = prepare_rows(rows, tokenizer_of(config.model, "auto"), settings)

    async def two_batches() -> tuple[pa.Table, pa.Table]:
        return await stage(rows), await stage(rows)

    failed, redone = asyncio.run(two_batches())
    errors = failed.column("error").to_pylist()
    assert all("injected device error" in e and "engine was rebuilt" in e and e.startswith("t.jsonl:") for e in errors)
    assert stage.rebuilds == 1 and stage.engine is not first_engine
    assert redone.column("error").to_pylist() == [None, None]
    assert all(len(p) > 0 for p in redone.column("pcm").to_pylist())
    stage.engine.close()


def test_the_prepare_stage_tokenises_exactly_as_the_engine_does(local_ray, tiny_checkpoint, tmp_path):
    """The job cleans, splits and tokenises text in a CPU stage; the engine does it itself for `raytts synth` and
    Serve. Same rows, same codes: default and per-row speakers, control tags, a transcript, per-row reference
    codes, long text split into segments, Chinese."""
    from actors.engine.sampling import SamplingParams
    from actors.replica import Synthesizer
    from actors.requests import request_from_fields
    from actors.settings import reserved_with_refine
    from actors.voices import reference_codes_from_prompt

    codes = encode_prompt(np.arange(4 * 20, dtype=np.int64).reshape(4, 20) % 40)
    long_text = " ".join(f"sentence number {w} is here." for w in "one two three four five six seven".split())
    rows = [
        {"id": "plain", "text": "hello there, how are you."},
        {"id": "seeded", "text": "good morning.", "speaker": "seed:5", "seed": 3},
        {"id": "tags", "text": "a quick [uv_break] brown fox.", "prompt": "[speed_3][oral_2]"},
        {"id": "codes", "text": "with codes.", "reference_codes": codes, "reference_text": "the transcript."},
        {"id": "long", "text": long_text * 3},
        {"id": "zh", "text": "你好，欢迎使用语音合成。今天天气很好！"},
        {"id": "null-speaker", "text": "default voice.", "speaker": None},
        {"id": "digits", "text": "call 555 now [uv_break] please?", "refine": False},
    ]
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "t.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    config = _config(tiny_checkpoint, [str(texts)], str(tmp_path / "out"))
    config.speaker = "seed:11"
    config.output.save_codes = True
    config.engine.max_segment_tokens = 24  # the long row becomes several segments
    config.sampling.min_new_tokens = 8  # a random checkpoint may otherwise end a segment at its first step
    report = run_job(config)
    assert report.failed == 0, report.failures
    columns = [
        "id",
        "codes",
        "segments",
        "spoken_text",
        "dropped_chars",
        "reading_notes",
        "qc",
        "qc_flags",
        "qc_attempts",
    ]
    job = {r["id"]: r for r in read_outputs(str(tmp_path / "out"), columns).to_pylist()}
    assert job["long"]["segments"] > 2
    spoken = ("call five five five now [uv_break] please", "?", "")  # digits read, `?` deleted, nothing guessed
    assert (job["digits"]["spoken_text"], job["digits"]["dropped_chars"], job["digits"]["reading_notes"]) == spoken
    assert report.dropped_chars_rows == 1
    assert all(
        r["qc"]["duration_s"] > 0 and r["qc_attempts"] == 1 and isinstance(r["qc_flags"], list) for r in job.values()
    )
    assert report.qc.measured == len(job)

    engine = config.engine
    synth = Synthesizer(model=config.model, device="cpu", max_slots=engine.max_slots,
                        budget_mib=engine.budget_mib, max_prompt_tokens=engine.max_prompt_tokens,
                        max_new_tokens=reserved_with_refine(config.sampling.max_new_tokens, config.refine),
                        max_segment_tokens=24)  # fmt: skip  # the job's actor reserves the same (refine's 384)
    defaults = SamplingParams(**config.sampling.model_dump())
    requests = []
    for number, row in enumerate(rows, start=1):
        request = request_from_fields(f"t.jsonl:{number}", row["id"], row, defaults, config.speaker, config.normalize)
        if row.get("reference_codes"):
            request.reference_codes = reference_codes_from_prompt(row["reference_codes"])
        requests.append(request)
    for row, result in zip(rows, synth.synthesize(requests), strict=True):
        assert result.error is None
        assert job[row["id"]]["segments"] == result.segments, row["id"]
        assert job[row["id"]]["codes"] == result.codes.tolist(), row["id"]
        assert (job[row["id"]]["spoken_text"], job[row["id"]]["dropped_chars"]) == (result.spoken_text, result.dropped)


def test_the_job_on_the_onnx_backend_writes_the_torch_backends_rows(local_ray, tiny_checkpoint, tiny_onnx, tmp_path):
    """engine.backend: onnx in the Ray Data job (engine actors run the exported blocks with onnxruntime): every row
    ok, and the same codes and spoken text as the same job on the torch backend."""
    texts = tmp_path / "texts"
    texts.mkdir()
    lines = ["Hello there.", "It is 9:30 on May 5.", "你好。", "A longer line, with a pause, and then more words."]
    (texts / "t.jsonl").write_text("".join(json.dumps({"id": f"r{i}", "text": t}) + "\n" for i, t in enumerate(lines)))
    frames = {}
    for backend in ("torch", "onnx"):
        config = _config(tiny_checkpoint, [str(texts)], str(tmp_path / backend))
        config.output.save_codes = True
        config.engine.backend = backend
        if backend == "onnx":
            config.engine.onnx.path = str(tiny_onnx)
        report = run_job(config)
        assert report.ok == len(lines) and report.failed == 0
        table = read_outputs(str(tmp_path / backend), ["id", "spoken_text", "codes"])
        frames[backend] = table.to_pandas().set_index("id").sort_index()
    torch_rows, onnx_rows = frames["torch"], frames["onnx"]
    assert list(torch_rows["spoken_text"]) == list(onnx_rows["spoken_text"])
    for row in torch_rows.index:
        assert np.array_equal(np.stack(torch_rows.loc[row, "codes"]), np.stack(onnx_rows.loc[row, "codes"])), row


def test_an_onnx_export_of_another_checkpoint_stops_the_job_before_any_actor(local_ray, tiny_onnx, tmp_path):
    from actors.checkpoint.random_weights import write_checkpoint
    from pipeline.job import ModelUnusable

    other = tmp_path / "other-ck"
    write_checkpoint(other, "tiny", 9)
    texts = tmp_path / "t.txt"
    texts.write_text("hello.\n")
    config = _config(other, [str(texts)], str(tmp_path / "out"))
    config.engine.backend = "onnx"
    config.engine.onnx.path = str(tiny_onnx)
    with pytest.raises(ModelUnusable, match="was made from checkpoint sha256"):
        run_job(config)


def test_the_asr_round_trip_scores_every_row_of_a_job(local_ray, tiny_checkpoint, tmp_path, caplog):
    """asr.enabled puts the recogniser's own actors between the engine and the store: every ok row carries what was
    heard and its error rate (a random-weight CTC recogniser in the transformers layout: no real one can be fetched
    here), asr_mismatch is counted in the report and the page shows the rate's histogram; a re-run changes nothing,
    and turning the round trip on is a change of settings (the rows are redone)."""
    from actors.asr import error_rate, write_tiny_recogniser
    from pipeline.listening import gather

    recogniser = write_tiny_recogniser(str(tmp_path / "asr"))
    texts = tmp_path / "texts"
    texts.mkdir()
    lines = [
        {"id": f"r{i}", "text": t} for i, t in enumerate(["hello there.", "good morning, everyone.", "你好世界", ""])
    ]
    (texts / "t.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    config = _config(tiny_checkpoint, [str(texts)], str(tmp_path / "out"))
    caplog.set_level(logging.INFO, logger="pipeline.progress")
    assert run_job(config).ok == 3
    assert "progress: 4 / 4 rows (100.0%)" in caplog.text and "1 failed, done" in caplog.text  # the job's last line
    on = config.model_copy(update={"asr": config.asr.model_copy(update={"enabled": True, "model": recogniser})})
    report = run_job(on)
    assert report.redo["changed_settings"] == 4 and report.to_dict()["qc"]["flags"]["asr_mismatch"] >= 1, report.redo
    rows = {r["id"]: r for r in read_outputs(str(tmp_path / "out"), ["id", "spoken_text", "error", "asr_text",
                                                                       "asr_error_rate", "qc_flags"]).to_pylist()}  # fmt: skip
    assert rows["r3"]["error"] and rows["r3"]["asr_text"] is None
    for row_id in ("r0", "r1", "r2"):
        row = rows[row_id]
        assert isinstance(row["asr_text"], str)
        assert row["asr_error_rate"] == pytest.approx(error_rate(row["spoken_text"], row["asr_text"]))
        assert ("asr_mismatch" in row["qc_flags"]) == (row["asr_error_rate"] > on.asr.max_error_rate)
    assert sum(gather(str(tmp_path / "out")).summary.counts["asr_error_rate"]) == 3
    again = run_job(on)
    assert again.this_run == 0 and again.skipped_finished == 4
