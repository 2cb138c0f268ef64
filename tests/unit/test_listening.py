"""The listening page (`pipeline.listening`, `raytts report`): over an output whose rows carry every fault the quality
checks know (constructed audio, measured by the real `actors.quality.measure`, encoded by the real encoder), the page
shows each flag's worst rows, a clean sample and the failed rows, and stays bounded; in a real headless Chromium
(tests/unit/test_listening_browser.py) it loads without console errors, every player loads and the filters work."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from actors.audio import encode_audio
from actors.model.config import SAMPLE_RATE
from actors.quality import FLAGS, QualityPolicy, measure
from benchmarks.quality_faults import FAULTS, clean
from jobs.cli import main
from pipeline.listening import gather, language, write_page
from pipeline.parts import RUN_SCHEMA, write_part

ZH = "今天天气很好我们一起去公园散步吧"


def _row(output: Path, row_id: str, made: tuple, speaker: str, embed: bool = False) -> dict:
    audio, codes, text, truncated = made
    qc = measure(audio, codes, text, truncated)
    data = encode_audio(audio, SAMPLE_RATE, "flac")
    path = output / "audio" / f"{row_id}.flac"
    if not embed:  # a job with output.audio_files: false keeps the bytes in the Parquet only
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return {
        "id": row_id, "key": row_id, "input_digest": "d", "text": text, "spoken_text": text, "speaker": speaker,
        "audio": {"bytes": data, "path": str(path)}, "audio_size": None if embed else len(data),
        "duration_s": qc.duration_s, "sample_rate": SAMPLE_RATE, "num_samples": audio.size, "seed": 7,
        "qc": qc.as_dict(), "qc_flags": QualityPolicy().flags(qc), "qc_attempts": 1, "source": f"texts.jsonl:{row_id}",
    }  # fmt: skip


def write_output(output: Path, clean_rows: int = 6, per_fault: int = 2, seed: int = 3) -> dict[str, list[str]]:
    """An output folder with `per_fault` rows of every fault, clean rows (English and Chinese, one with its audio
    in the Parquet only), two failed rows; returns each flag's expected row ids."""
    rng = np.random.default_rng(seed)
    rows, expected = [], {flag: [] for flag in FLAGS}
    for name, (flag, fault) in FAULTS.items():
        for k in range(per_fault):
            row_id = f"{flag}-{k}"
            rows.append(_row(output, row_id, fault(clean(rng), rng), "alice" if k % 2 else "bob"))
            assert flag in rows[-1]["qc_flags"], (name, rows[-1]["qc"])
            expected[flag].append(row_id)
    for k in range(clean_rows):
        made = clean(rng)
        if k == 0:
            made = (made[0], made[1], ZH[: max(4, len(made[2].split()) * 2)], 0)
        rows.append(_row(output, f"clean-{k}", made, "carol", embed=k == 1))
    for k in range(2):
        rows.append({"id": f"bad-{k}", "key": f"bad-{k}", "input_digest": "d", "text": "x", "source": f"t.jsonl:{k}",
                     "error": f"row bad-{k}: the speaker 'nobody' is not in the speaker shards", "error_kind": "input"})  # fmt: skip
    half = len(rows) // 2
    for block in (rows[:half], rows[half:]):  # two parts: the page reads one part at a time
        write_part(pa.Table.from_pylist(block, schema=RUN_SCHEMA), str(output / "parts"))
    return expected


def test_gather_keeps_each_flags_worst_rows_the_clean_sample_and_failures(tmp_path: Path) -> None:
    expected = write_output(tmp_path)
    listening = gather(str(tmp_path))
    assert (listening.rows, listening.failed) == (sum(map(len, expected.values())) + 6 + 2, 2)
    shown = {row["id"]: row for row in listening.shown()}
    for flag, ids in expected.items():
        assert set(ids) <= set(shown), flag
    assert {f"clean-{k}" for k in range(6)} <= set(shown)
    assert [row["id"] for row in listening.failures] == ["bad-0", "bad-1"]
    summary = listening.summary.to_dict()
    assert summary["rows_measured"] == listening.ok
    for hist in summary["histograms"].values():
        assert sum(hist["counts"]) <= listening.ok
    assert sum(summary["histograms"]["duration_s"]["counts"]) == listening.ok


def test_the_page_is_bounded_and_shows_the_worst_rows_of_a_flag(tmp_path: Path) -> None:
    """30 looping rows, 3 shown per flag: exactly the 3 longest loops, whatever part they are in."""
    rng = np.random.default_rng(5)
    _, loop = FAULTS["looped codes"]
    rows = [_row(tmp_path, f"loop-{k:02d}", loop(clean(rng), rng), "alice") for k in range(30)]
    for start in range(0, 30, 7):
        write_part(pa.Table.from_pylist(rows[start : start + 7], schema=RUN_SCHEMA), str(tmp_path / "parts"))
    listening = gather(str(tmp_path), per_flag=3)
    worst = sorted(rows, key=lambda r: (r["qc"]["loop_s"], r["id"]), reverse=True)[:3]
    shown = [row["id"] for row in listening.shown() if "loop" in row["qc_flags"]]
    assert shown == [row["id"] for row in worst]


def test_report_command_writes_the_page_with_players_and_embeds_parquet_only_audio(tmp_path: Path, capsys) -> None:
    write_output(tmp_path)
    assert main(["report", str(tmp_path)]) == 0
    assert "listening page:" in capsys.readouterr().out
    html = (tmp_path / "report.html").read_text()
    assert 'src="audio/loop-0.flac"' in html
    assert "data:audio/flac;base64," in html  # clean-1: its audio is in the Parquet only
    assert html.count("<audio ") == sum(1 for _ in gather(str(tmp_path)).shown())
    assert html.count('alt="histogram of') == 7
    assert "the speaker &#39;nobody&#39; is not in the speaker shards" in html  # escaped, not raw


def test_report_on_an_output_with_no_rows_says_so(tmp_path: Path, capsys) -> None:
    assert main(["report", str(tmp_path)]) == 1
    assert "holds no output rows" in capsys.readouterr().err
    assert main(["report", str(tmp_path), "--per-flag", "0"]) == 2


def test_page_on_object_storage(s3_server, tmp_path: Path) -> None:
    """The page is written next to an output on S3 (SeaweedFS on loopback), as text/html."""
    import os

    local = tmp_path / "local"
    write_output(local, clean_rows=2, per_fault=1)
    client = s3_server.client()
    client.create_bucket(Bucket="listening")
    for path in local.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), "listening", f"out/{path.relative_to(local)}")
    saved = dict(os.environ)
    os.environ.update(s3_server.env())
    try:
        page, listening = write_page("s3://listening/out")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert page == "s3://listening/out/report.html" and listening.rows == len(FAULTS) + 2 + 2
    head = client.head_object(Bucket="listening", Key="out/report.html")
    assert head["ContentType"].startswith("text/html")
    body = client.get_object(Bucket="listening", Key="out/report.html")["Body"].read().decode()
    assert 'src="audio/loop-0.flac"' in body


@pytest.mark.parametrize(
    ("text", "expected"),
    [("Hello there.", "en"), (ZH, "zh"), (f"{ZH} OK Google", "mixed"), ("[laugh] 42", "other"), (None, "other")],
)
def test_language(text: str | None, expected: str) -> None:
    assert language(text) == expected


def test_histogram_bins_are_labelled_with_open_ends() -> None:
    from pipeline.listening import _bin_label

    assert _bin_label(60, math.inf) == "60+" and _bin_label(-math.inf, -60) == "< -60" and _bin_label(0, 1) == "0-1"


def test_a_synth_file_from_before_the_quality_columns_still_gets_a_page(tmp_path: Path) -> None:
    """`raytts report` on a `raytts synth` folder whose Parquet predates qc, qc_flags, qc_attempts and the ASR
    columns: its rows are counted (as unmeasured) and their audio embedded; nothing fails."""
    import pyarrow.parquet as pq

    rng = np.random.default_rng(1)
    audio = clean(rng)[0]
    data = encode_audio(audio, SAMPLE_RATE, "flac")
    old = pa.table({"id": ["a", "b"], "text": ["hello.", "x"], "spoken_text": ["hello", None],
                    "audio": [{"bytes": data, "path": "a.flac"}, None], "error": [None, "row 2: text is empty"],
                    "error_kind": [None, "input"], "speaker": ["seed:1", None], "duration_s": [audio.size / SAMPLE_RATE, None]})  # fmt: skip
    pq.write_table(old, tmp_path / "part-00000.parquet")
    page, listening = write_page(str(tmp_path))
    assert (listening.rows, listening.ok, listening.failed, listening.summary.measured) == (2, 1, 1, 0)
    assert "text is empty" in (tmp_path / "report.html").read_text()
