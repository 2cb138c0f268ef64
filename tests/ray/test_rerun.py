"""A re-run gives what a fresh run would: after any sequence of edits (rows added, edited, moved, deleted; shards
renamed; sampling or model changed), killed drivers and a second driver, the output equals a fresh run's on today's
inputs and settings (rows, ids, errors, audio bytes), and the report says what was redone and why.

Real local Ray, the tiny model (two random checkpoints in the real layout), a few GPT steps per row; other
drivers are real processes joined to the same Ray.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Verbosity, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule, run_state_machine_as_test

from pipeline.job import OutputBusy, run_job
from tests.support.rerun import JobFolder, audio_files, driver, lease_holder, output_rows, same_audio, wait_for

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory) -> Path:
    from actors.checkpoint.random_weights import write_checkpoint

    root = tmp_path_factory.mktemp("tiny-ck-1")
    write_checkpoint(root, "tiny", 1)
    return root


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".txt":
        path.write_text("".join(r["text"] + "\n" for r in rows))
    elif path.suffix == ".csv":
        lines = ["id,text,speaker"] + [f"{r['id']},{r['text']},{r.get('speaker', '')}" for r in rows]
        path.write_text("\n".join(lines) + "\n")
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def assert_fresh(job: JobFolder) -> list[dict]:
    """The output equals what a fresh run on today's inputs and settings writes; returns its rows."""
    fresh = job.root / "fresh"
    shutil.rmtree(fresh, ignore_errors=True)
    report = run_job(job.config(output=fresh))
    assert report.books["closed"]
    got, want = output_rows(job.output), output_rows(fresh)
    assert [r["source"] for r in got] == [r["source"] for r in want]
    for mine, theirs in zip(got, want, strict=True):  # codes exactly; samples to one 16-bit step (`same_audio`)
        assert {**mine, "audio": None} == {**theirs, "audio": None}, mine["source"]
        assert same_audio(mine["audio"], theirs["audio"]), mine["source"]
    files, fresh_files = audio_files(job.output), audio_files(fresh)
    assert sorted(files) == sorted(fresh_files)
    assert all(same_audio(files[name], fresh_files[name]) for name in files)
    return got


def _redo(report) -> dict:
    return {k: v for k, v in report.redo.items() if v and k not in ("examples",)}


def test_edits_between_runs_redo_exactly_what_changed(local_ray, tiny_checkpoint, other_checkpoint, tmp_path):
    """Every case of the issue in one job folder: an edited text and speaker, changed sampling, another model, a
    renamed and a moved shard, a line inserted at the top, a deleted shard, and an id reused by a new shard that
    sorts first. Each run redoes exactly what changed and says why; the output equals a fresh run's."""
    job = JobFolder(tmp_path, str(tiny_checkpoint))
    _write(job.inputs / "a.jsonl", [{"id": f"a{i}", "text": f"alpha row {i}."} for i in range(4)])
    _write(
        job.inputs / "b.csv",
        [{"id": "b1", "text": "beta one."}, {"id": "b2", "text": "beta two.", "speaker": "seed:3"}],
    )
    _write(job.inputs / "c.txt", [{"text": "a line."}, {"text": "same line."}, {"text": "same line."}])
    first = run_job(job.config())
    assert (first.this_run, first.rows, first.failed, _redo(first)) == (9, 9, 0, {"new": 9})
    before = {r["key"]: r for r in output_rows(job.output)}

    _write(
        job.inputs / "a.jsonl", [{"id": f"a{i}", "text": f"alpha row {i}{'!' if i == 2 else '.'}"} for i in range(4)]
    )
    _write(
        job.inputs / "b.csv",
        [
            {"id": "b1", "text": "beta one.", "speaker": "seed:9"},
            {"id": "b2", "text": "beta two.", "speaker": "seed:3"},
        ],
    )
    edited = run_job(job.config())
    assert (edited.this_run, _redo(edited)) == (2, {"changed_input": 2})
    after = {r["key"]: r for r in output_rows(job.output)}
    assert {k for k in after if after[k]["audio"] != before[k]["audio"]} == {"a2", "b1"}

    job.temperature = 0.7
    resampled = run_job(job.config())
    assert (resampled.this_run, resampled.redo["changed_settings"]) == (9, 9)
    assert resampled.redo["settings_changed"] == ["sampling.temperature"]
    job.model = str(other_checkpoint)
    remodelled = run_job(job.config())
    assert remodelled.redo["settings_changed"] == ["model_sha256"] and remodelled.this_run == 9
    assert {r["job_digest"] for r in output_rows(job.output)} == {remodelled_digest(job)}

    (job.inputs / "c.txt").rename(job.inputs / "renamed.txt")
    (job.inputs / "sub").mkdir()
    (job.inputs / "b.csv").rename(job.inputs / "sub" / "b.csv")
    moved = run_job(job.config())
    assert (moved.this_run, _redo(moved)) == (0, {"moved": 5})
    assert sorted({r["source"].split(":")[0] for r in output_rows(job.output)}) == [
        "in/a.jsonl",
        "in/renamed.txt",
        "in/sub/b.csv",
    ]

    lines = (job.inputs / "renamed.txt").read_text()
    (job.inputs / "renamed.txt").write_text("a new first line.\n" + lines)
    inserted = run_job(job.config())
    assert (inserted.this_run, _redo(inserted)) == (1, {"new": 1, "moved": 3})
    (job.inputs / "a.jsonl").unlink()
    deleted = run_job(job.config())
    assert (deleted.this_run, deleted.rows, _redo(deleted)) == (0, 6, {"gone": 4})
    assert not any(name.startswith("a") and name[1].isdigit() for name in audio_files(job.output))
    assert_fresh(job)

    _write(job.inputs / "0first.jsonl", [{"id": "b1", "text": "a different text under a finished id."}])
    reused = run_job(job.config())
    rows = {r["source"]: r for r in assert_fresh(job)}
    assert rows["in/0first.jsonl:1"]["error"] is None and rows["in/0first.jsonl:1"]["id"] == "b1"
    assert "duplicate id 'b1' (first seen at in/0first.jsonl:1)" in rows["in/sub/b.csv:2"]["error"]
    assert _redo(reused) == {"changed_input": 1, "new": 1} and reused.exit_status == 1  # the duplicate failed


def remodelled_digest(job: JobFolder) -> str:
    from actors.checkpoint import resolve
    from actors.text import front_end_version
    from pipeline.identity import job_digest, job_settings

    config = job.config()
    return job_digest(job_settings(config, resolve(config.model).sha256, front_end_version(config.normalize)), None)


def test_a_second_driver_on_the_same_output_refuses_naming_the_first(local_ray, tiny_checkpoint, tmp_path):
    """Two drivers started one after the other wrote 224 rows for 200 lines; now the second refuses at once, before
    writing anything, naming the first driver's process, and the first completes alone."""
    job = JobFolder(tmp_path, str(tiny_checkpoint))
    _write(job.inputs / "a.txt", [{"text": f"line number {i}."} for i in range(24)])
    first = driver(job.config(), local_ray, tmp_path / "first.log")
    try:
        wait_for(lambda: lease_holder(job.output) == first.pid, what="the first driver's lease")
        with pytest.raises(OutputBusy, match=f"pid {first.pid} "):
            run_job(job.config())
        assert first.wait(timeout=300) == 0, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        first.kill()
    assert len(output_rows(job.output)) == 24 and lease_holder(job.output) is None
    assert_fresh(job)


def test_a_killed_driver_is_taken_over_and_the_rerun_equals_a_fresh_run(local_ray, tiny_checkpoint, tmp_path):
    job = JobFolder(tmp_path, str(tiny_checkpoint))
    _write(job.inputs / "a.jsonl", [{"id": f"r{i}", "text": f"row {i}."} for i in range(24)])
    first = driver(job.config(), local_ray, tmp_path / "first.log")
    try:
        wait_for(lambda: any((job.output / "parts").glob("*.parquet")), what="a first part")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        first.kill()
    assert lease_holder(job.output) == first.pid  # the dead driver's lease is still there
    stale = job.output / "_books" / "dead"  # as a driver killed while its parse tasks wrote the books leaves it
    stale.mkdir(parents=True, exist_ok=True)
    (stale / "block-0000000.parquet").write_bytes(b"half a file")
    report = run_job(job.config())
    assert report.books["closed"] and report.rows == 24 and report.skipped_finished >= 4
    assert not (job.output / "_books").exists()
    assert_fresh(job)


def test_parts_and_audio_deleted_while_a_job_runs_fail_its_books_and_the_next_run_repairs(
    local_ray, tiny_checkpoint, tmp_path
):
    """A part deleted mid-run (a lifecycle rule, a cleanup script) was reported as `finished` with rows missing."""
    job = JobFolder(tmp_path, str(tiny_checkpoint))
    _write(job.inputs / "a.jsonl", [{"id": f"r{i}", "text": f"row {i}."} for i in range(32)])
    deleted: list[str] = []

    def delete_first_part_and_audio() -> None:
        wait_for(lambda: any((job.output / "parts").glob("*.parquet")), what="a first part")
        part = next((job.output / "parts").glob("*.parquet"))
        part.unlink()
        deleted.append(part.name)
        wait_for(lambda: len(list((job.output / "parts").glob("*.parquet"))) >= 2, what="a second part")
        audio = sorted((job.output / "audio").iterdir())[-1]
        audio.unlink()
        deleted.append(audio.name)

    thread = threading.Thread(target=delete_first_part_and_audio)
    thread.start()
    report = run_job(job.config())
    thread.join(timeout=60)
    assert len(deleted) == 2, "the job ended before the parts could be deleted"
    saved = json.loads((job.output / "_report.json").read_text())
    assert report.status == saved["status"] == "incomplete" and report.exit_status == 1
    assert report.books["missing"] == 4 and "missing" in saved["books"]["problem"]
    repaired = run_job(job.config())
    assert repaired.books["closed"] and repaired.this_run == 4 + report.books["missing_audio"]
    assert_fresh(job)


def test_an_output_inside_the_input_folder_is_not_read_back(local_ray, tiny_checkpoint, tmp_path):
    job = JobFolder(tmp_path, str(tiny_checkpoint), output_name="in/out")
    _write(job.inputs / "a.jsonl", [{"id": f"r{i}", "text": f"row {i}."} for i in range(3)])
    assert run_job(job.config()).rows == 3
    again = run_job(job.config())
    assert (again.rows, again.this_run, again.problems, again.exit_status) == (3, 0, [], 0)
    assert "were not read as input" in again.notes[0]


def test_a_moved_output_a_truncated_file_and_a_misspelt_field(local_ray, tiny_checkpoint, tmp_path):
    """Found by a new user: a moved output folder kept rows whose audio paths (parts and manifest) named the old
    folder; an emptied audio file counted as finished; a misspelt setting (`temprature`) changed nothing, silently."""
    job = JobFolder(tmp_path, str(tiny_checkpoint), output_name="first")
    rows = [{"id": f"r{i}", "text": f"row {i}.", "temprature": 0.1, "book": "b"} for i in range(3)]
    _write(job.inputs / "a.jsonl", rows)
    first = run_job(job.config())
    assert first.rows == 3 and any("did you mean 'temperature'" in note for note in first.notes), first.notes
    shutil.move(job.output, tmp_path / "moved")
    job.output_name = "moved"
    moved = run_job(job.config())
    assert (moved.this_run, moved.redo["relocated"]) == (0, 3) and moved.books["closed"]
    manifest = [json.loads(line) for line in (job.output / "manifest.jsonl").read_text().splitlines()]
    assert all(Path(entry["audio"]).is_file() and entry["audio"].startswith(str(job.output)) for entry in manifest)
    (job.output / "audio" / "r1.flac").write_bytes(b"")  # emptied (a full disk, a copy cut short)
    repaired = run_job(job.config())
    assert repaired.this_run == 1 and repaired.redo["examples"]["repaired"] == ["r1"]
    assert_fresh(job)


# ------------------------------------------------------------------------------------------ the state machine

WORDS = ["alpha.", "beta.", "gamma delta.", "你好。", "same words."]
EXAMPLES = int(os.environ.get("RAYTTS_RERUN_EXAMPLES", "2"))


class Reruns(RuleBasedStateMachine):
    """Sequences of edits, runs, killed drivers and second drivers on one job folder. After every run: each current
    input line is one row, rows not redone kept the audio their digests had, audio files are the ok rows, the
    report's count of rows redone is the rows whose key or digests changed; at the end, a fresh run's output."""

    ray_address: str = ""
    checkpoints: tuple[str, str] = ("", "")

    def __init__(self) -> None:
        super().__init__()
        self.job = JobFolder(Path(tempfile.mkdtemp(prefix="rerun-")), self.checkpoints[0])
        self.shards: dict[str, list[dict]] = {}
        self.count = 0
        self.seen: dict[tuple, bytes] = {}  # (key, input digest, job digest) -> the audio it was made with
        self.previous: set[tuple] = set()
        self.steps: list[str] = []

    @initialize(texts=st.lists(st.sampled_from(WORDS), min_size=2, max_size=4))
    def first_run(self, texts):
        self.shards["first.jsonl"] = [{"text": text} for text in texts] + [{"id": "fixed", "text": "an id."}]
        self._save("first.jsonl")
        self.run()

    def _name(self, fmt: str, sub: bool) -> str:
        self.count += 1
        return f"{'sub/' if sub else ''}s{self.count}.{fmt}"

    def _save(self, name: str) -> None:
        _write(self.job.inputs / name, self.shards[name])

    @rule(fmt=st.sampled_from(["jsonl", "csv", "txt"]), texts=st.lists(st.sampled_from(WORDS), min_size=1, max_size=3),
          ids=st.booleans(), sub=st.booleans())  # fmt: skip
    def add_shard(self, fmt, texts, ids, sub):
        self.steps.append("add_shard")
        name = self._name(fmt, sub)
        rows = []
        for text in texts:
            self.count += 1
            rows.append({"text": text, **({"id": f"i{self.count}"} if ids and fmt != "txt" else {})})
        if fmt == "csv":
            for row in rows:
                row.setdefault("id", "")
        self.shards[name] = rows
        self._save(name)

    shard = st.integers(0, 10**6)

    def _pick(self, index: int, formats: tuple[str, ...] = ("jsonl", "csv", "txt")) -> str | None:
        names = sorted(n for n in self.shards if n.rsplit(".", 1)[1] in formats and self.shards[n])
        return names[index % len(names)] if names else None

    @rule(index=shard, row=shard, text=st.sampled_from(WORDS))
    def edit_text(self, index, row, text):
        self.steps.append("edit_text")
        name = self._pick(index)
        if name:
            self.shards[name][row % len(self.shards[name])]["text"] = text + " edited"
            self._save(name)

    @rule(index=shard, row=shard, seed=st.integers(1, 3))
    def edit_speaker(self, index, row, seed):
        self.steps.append("edit_speaker")
        name = self._pick(index, ("jsonl", "csv"))
        if name:
            self.shards[name][row % len(self.shards[name])]["speaker"] = f"seed:{seed}"
            self._save(name)

    @rule(index=shard, text=st.sampled_from(WORDS))
    def insert_first_line(self, index, text):
        self.steps.append("insert_first_line")
        name = self._pick(index)
        if name:
            self.shards[name].insert(0, {"text": text, **({"id": ""} if name.endswith(".csv") else {})})
            self._save(name)

    @rule(index=shard, sub=st.booleans())
    def rename_or_move(self, index, sub):
        self.steps.append("rename_or_move")
        name = self._pick(index)
        if name:
            new = self._name(name.rsplit(".", 1)[1], sub)
            (self.job.inputs / new).parent.mkdir(parents=True, exist_ok=True)
            (self.job.inputs / name).rename(self.job.inputs / new)
            self.shards[new] = self.shards.pop(name)

    @rule(index=shard)
    def delete_shard(self, index):
        self.steps.append("delete_shard")
        name = self._pick(index)
        if name:
            (self.job.inputs / name).unlink()
            del self.shards[name]

    @rule(index=shard, text=st.sampled_from(WORDS))
    def reuse_an_id_in_a_shard_that_sorts_first(self, index, text):
        self.steps.append("reuse_an_id_in_a_shard_that_sorts_first")
        ids = sorted(r["id"] for rows in self.shards.values() for r in rows if r.get("id"))
        if ids:
            self.count += 1
            name = f"0reuse{self.count}.jsonl"
            self.shards[name] = [{"id": ids[index % len(ids)], "text": text}]
            self._save(name)

    @rule()
    def change_sampling(self):
        self.steps.append("change_sampling")
        self.job.temperature = 0.7 if self.job.temperature == 0.5 else 0.5

    @rule()
    def change_model(self):
        self.steps.append("change_model")
        self.job.model = self.checkpoints[1] if self.job.model == self.checkpoints[0] else self.checkpoints[0]

    @precondition(lambda self: self.shards)
    @rule()
    def run(self):
        self.steps.append("run")
        self._check(run_job(self.job.config()))

    @precondition(lambda self: self.shards and "kill_a_driver_then_run" not in self.steps)  # once: it is slow
    @rule(delay=st.sampled_from([0.0, 1.0, 3.0]))
    def kill_a_driver_then_run(self, delay):
        self.steps.append("kill_a_driver_then_run")
        killed = driver(self.job.config(), self.ray_address, self.job.root / "killed.log")
        try:
            wait_for(lambda: lease_holder(self.job.output) == killed.pid or killed.poll() is not None, what="a lease")
            time.sleep(delay)
        finally:
            killed.send_signal(signal.SIGKILL)
            killed.wait(timeout=30)
        self._check(run_job(self.job.config()), after_kill=True)

    @precondition(lambda self: self.shards and "a_second_driver_refuses" not in self.steps)  # once: it is slow
    @rule()
    def a_second_driver_refuses(self):
        self.steps.append("a_second_driver_refuses")
        first = driver(self.job.config(), self.ray_address, self.job.root / "first.log")
        try:
            wait_for(lambda: lease_holder(self.job.output) == first.pid, what="the first driver's lease")
            with pytest.raises(OutputBusy, match=f"pid {first.pid} "):
                run_job(self.job.config())
            assert first.wait(timeout=300) in (0, 1), (self.job.root / "first.log").read_text()[-2000:]
        finally:
            first.kill()
        self._check(json.loads((self.job.root / "first.json").read_text()))

    def _expected_sources(self) -> list[str]:
        sources = []
        for name, rows in self.shards.items():
            first = 2 if name.endswith(".csv") else 1
            sources.extend(f"in/{name}:{first + n}" for n in range(len(rows)))
        return sorted(sources)

    def _check(self, report, after_kill: bool = False) -> None:
        report = report if isinstance(report, dict) else report.to_dict()
        rows = output_rows(self.job.output)
        assert [r["source"] for r in rows] == self._expected_sources()
        assert report["books"]["closed"] and report["status"] == "finished", report["books"]
        now = {(r["key"], r["input_digest"], r["job_digest"]) for r in rows}
        if not after_kill:  # a killed driver's rows were made by a run the report does not count
            assert report["this_run"] == len(now - self.previous), (report["redo"], len(now - self.previous))
        for row in rows:
            triple = (row["key"], row["input_digest"], row["job_digest"])
            if row["audio"] is not None:
                assert same_audio(self.seen.setdefault(triple, row["audio"]), row["audio"]), row["source"]
        ok = sorted(f"{r['id']}.flac" for r in rows if r["error"] is None)
        assert sorted(audio_files(self.job.output)) == ok
        self.previous = now

    def teardown(self) -> None:
        if os.environ.get("RAYTTS_RERUN_VERBOSE"):
            print("steps:", " ".join(self.steps))
        try:
            if self.shards:
                self.run()  # today's inputs, then compare with a fresh run
                assert_fresh(self.job)
        finally:
            shutil.rmtree(self.job.root, ignore_errors=True)


SEED = int(os.environ.get("RAYTTS_RERUN_SEED", "20261207"))


def test_any_sequence_of_edits_and_runs_ends_as_a_fresh_run(local_ray, tiny_checkpoint, other_checkpoint):
    """Replayable: the sequences come from a fixed seed (RAYTTS_RERUN_SEED; RAYTTS_RERUN_EXAMPLES for more)."""
    Reruns.ray_address = local_ray
    seed(SEED)(Reruns)  # what @seed does to a test, for the state machine
    Reruns.checkpoints = (str(tiny_checkpoint), str(other_checkpoint))
    run_state_machine_as_test(
        Reruns,
        settings=settings(max_examples=EXAMPLES, stateful_step_count=10, deadline=None, derandomize=False,
                          database=None, suppress_health_check=list(HealthCheck),
                          verbosity=Verbosity.verbose if os.environ.get("RAYTTS_RERUN_VERBOSE") else Verbosity.normal),
    )  # fmt: skip
