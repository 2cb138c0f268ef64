"""The output location is checked before any synthesis (no Ray needed): schemes that cannot take parts or audio
files, and buckets that cannot be written, fail up front with what to do; a parts listing that fails is an error,
never "nothing finished yet" (which would redo and duplicate every row)."""

from __future__ import annotations

import json

import pytest

from pipeline.checks import OutputUnusable, check_output, hold_output, mark_running
from pipeline.config import JobConfig
from pipeline.parts import read_outputs


def _config(output: str, audio_files: bool = True) -> JobConfig:
    return JobConfig.model_validate(
        {"inputs": {"text": ["x.txt"]}, "output": {"path": output, "audio_files": audio_files}}
    )


def test_file_uri_output_is_a_local_folder(tmp_path):
    config = _config(f"file://{tmp_path}/out")
    assert config.output.path == f"{tmp_path}/out"
    check_output(config)
    with hold_output(config.output.path):
        mark_running(config.output.path)
        assert (tmp_path / "out" / "_lease.json").exists()
    report = json.loads((tmp_path / "out" / "_report.json").read_text())
    assert report["status"] == "running"  # until the job overwrites it with the final report
    assert not (tmp_path / "out" / "_lease.json").exists()  # released


def test_a_scheme_pyarrow_cannot_write_parts_to_fails_up_front():
    with pytest.raises(OutputUnusable, match=r"azure://c/out.*Parquet parts cannot be written there"):
        check_output(_config("azure://c/out"))


def test_a_scheme_without_its_smart_open_extra_names_the_package():
    pytest.importorskip("pyarrow._gcsfs")
    try:
        import google.cloud.storage  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("google-cloud-storage is installed here, so gs:// audio files are writable")
    with pytest.raises(OutputUnusable, match=r"smart-open\[gcs\]"):
        check_output(_config("gs://bucket/out"))


@pytest.fixture()
def s3_env(s3_server, monkeypatch):
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server


def test_an_unwritable_bucket_fails_up_front(s3_env, monkeypatch):
    s3_env.client().create_bucket(Bucket="locked")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    check_output(_config("s3://locked/out"))  # the scheme is fine; writing is not
    with pytest.raises(OutputUnusable, match=r"s3://locked/out'?: cannot take its lease there"):
        with hold_output("s3://locked/out"):
            pass
    with pytest.raises(OutputUnusable, match=r"s3://locked/out'?: writing s3://locked/out/_report.json failed"):
        mark_running("s3://locked/out")


def test_a_writable_bucket_passes_and_holds_only_the_running_report(s3_env):
    client = s3_env.client()
    client.create_bucket(Bucket="checked")
    check_output(_config("s3://checked/out"))
    with hold_output("s3://checked/out"):
        mark_running("s3://checked/out")
        keys = [o["Key"] for o in client.list_objects_v2(Bucket="checked")["Contents"]]
        assert sorted(keys) == ["out/_lease.json", "out/_report.json"]
    assert [o["Key"] for o in client.list_objects_v2(Bucket="checked")["Contents"]] == ["out/_report.json"]


def test_a_failed_parts_listing_raises_instead_of_reading_as_empty(s3_env, monkeypatch):
    client = s3_env.client()
    client.create_bucket(Bucket="listed")
    client.put_object(Bucket="listed", Key="out/parts/part-x.parquet", Body=b"x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(OSError, match=r"cannot list the job's finished parts under listed/out/parts"):
        read_outputs("s3://listed/out", ["id"])


def test_a_run_that_starts_removes_the_last_runs_manifest(tmp_path):
    """A manifest left by a finished run listed rows a later, interrupted run had superseded."""

    (tmp_path / "manifest.jsonl").write_text('{"id": "old"}\n')
    status = mark_running(str(tmp_path))
    assert status["status"] == "running" and not (tmp_path / "manifest.jsonl").exists()
    assert json.loads((tmp_path / "_report.json").read_text())["status"] == "running"


def test_the_job_digest_records_the_effective_device_and_dtype():
    """`engine.dtype: float32` said on a CPU job is what the default gives there: one digest, nothing redone."""
    from pipeline.identity import job_settings

    def settings(**engine):
        config = JobConfig.model_validate(
            {"inputs": {"text": "texts/"}, "output": {"path": "out"}, "model": "m", "engine": engine,
             "actors": {"num_gpus": 0}}
        )  # fmt: skip
        return job_settings(config, "sha", "v1")["engine"]

    assert settings() == settings(dtype="float32") == settings(device="cpu")
    assert settings()["device"] == "cpu" and settings()["dtype"] == "float32"
    assert settings(dtype="bfloat16")["dtype"] == "bfloat16"


def test_unknown_fields_are_named_with_the_field_they_may_misspell():
    from pipeline.inputs import unknown_fields_note

    note = unknown_fields_note({"temprature": 12, "book": 40})
    assert (
        note is not None
        and "'book' (40 rows)" in note
        and "'temprature' (12 rows, did you mean 'temperature'?)" in note
    )
    assert note.index("book") < note.index("temprature") and unknown_fields_note({}) is None
