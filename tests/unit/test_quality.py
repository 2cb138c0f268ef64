"""Per-row quality checks (actors/quality.py): each detector on constructed rows with its fault and on clean rows
(benchmarks/quality_faults.py: speech-like audio, not a model's, since no real weights run here), the loop detector's
edges, the policy's settings, and the measures on real rows of the replica and of `raytts synth`."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from actors.model.config import SAMPLE_RATE
from actors.quality import FLAGS, QualityPolicy, QualitySummary, _longest_loop, measure, spoken_units
from actors.settings import QualitySettings
from benchmarks.quality_faults import FAULTS, clean, speech


@pytest.mark.parametrize("fault", list(FAULTS))
def test_each_fault_raises_its_flag(fault):
    """At least 80% of 30 rows (the measured rates, over 300 rows each, are in benchmarks/RESULTS.md: a squeeze
    to 1/4 of an already quick row stays above the too_fast threshold now and then)."""
    flag, make = FAULTS[fault]
    rng = np.random.default_rng(hash(fault) % 2**32)
    policy = QualityPolicy()
    hits = sum(flag in policy.flags(measure(*make(clean(rng), rng))) for _ in range(30))
    assert hits >= 24, f"{fault}: {hits}/30 rows raised {flag}"


def test_clean_rows_raise_no_flag():
    rng = np.random.default_rng(1)
    policy = QualityPolicy()
    flagged = [policy.flags(measure(*clean(rng))) for _ in range(60)]
    assert flagged == [[]] * 60


def test_the_loop_detector_needs_three_periods_and_sees_all_codebooks():
    rng = np.random.default_rng(3)
    noise = rng.integers(0, 626, size=(200, 4))
    assert _longest_loop(noise) == 0
    pattern = rng.integers(0, 626, size=(5, 4))
    looped = np.concatenate([noise[:50], np.tile(pattern, (20, 1)), noise[:50]])
    assert _longest_loop(looped) == 100  # 20 copies of a 5-frame period
    twice = np.concatenate([noise[:50], np.tile(pattern, (2, 1)), noise[50:100]])
    assert _longest_loop(twice) == 0  # a phrase said twice is no loop
    one_codebook = looped.copy()
    one_codebook[50:150, 3] = rng.integers(0, 626, size=100)
    assert _longest_loop(one_codebook) == 0


def test_units_count_chinese_characters_and_english_words_without_tags():
    assert spoken_units("[uv_break]Hello world, 你好 [laugh] it's fine") == 2 + 2 + 2
    assert spoken_units("[speed_5]") == 0
    row = measure(speech(1.0, np.random.default_rng(0)), None, "[speed_5]", 0)
    assert row.seconds_per_unit is None and row.loop_s == 0.0


def test_the_settings_are_the_policy_and_refuse_what_they_do_not_know():
    strict = QualitySettings(max_pause_s=0.5, on_fail="error").policy()
    assert strict == QualityPolicy(max_pause_s=0.5, on_fail="error")
    rng = np.random.default_rng(5)
    audio, codes, text, _ = clean(rng)
    gap = np.concatenate([audio[: audio.size // 2], np.zeros(SAMPLE_RATE, np.float32), audio[audio.size // 2 :]])
    assert strict.flags(measure(gap, codes, text, 0)) == ["long_pause"]
    assert QualityPolicy().flags(measure(gap, codes, text, 0)) == []
    with pytest.raises(ValueError, match="on_fail"):
        QualitySettings(on_fail="retry")
    with pytest.raises(ValueError, match="max_silence"):
        QualitySettings(max_silence=1)


def test_the_summary_counts_flags_and_bins_every_measure():
    summary = QualitySummary()
    rng = np.random.default_rng(2)
    for _ in range(5):
        summary.add(measure(*clean(rng)).as_dict(), [])
    summary.add(measure(*FAULTS["clipping"][1](clean(rng), rng)).as_dict(), ["clipped"])
    summary.add(None, None)  # an error row without audio: not measured
    out = summary.to_dict()
    assert (out["rows_measured"], out["rows_flagged"], out["flags"]["clipped"]) == (6, 1, 1)
    assert set(out["flags"]) == set(FLAGS)
    signal = {name: h for name, h in out["histograms"].items() if name != "asr_error_rate"}
    assert all(sum(h["counts"]) == 6 for h in signal.values())
    assert sum(out["histograms"]["asr_error_rate"]["counts"]) == 0  # no row went through the ASR round trip
    summary.add(measure(*clean(rng)).as_dict(), ["asr_mismatch"], 1, 0.6)
    out = summary.to_dict()
    assert out["histograms"]["asr_error_rate"]["counts"] == [0, 0, 0, 0, 0, 1, 0]  # 0.5 <= 0.6 < 1
    assert out["flags"]["asr_mismatch"] == 1
    json.dumps(out)  # the report is JSON


def test_replica_rows_carry_measures_and_on_fail_error_makes_quality_error_rows(tiny_checkpoint, tmp_path):
    """The tiny random model's rows through the replica: measured where the audio is, flags under the policy; with
    `on_fail: error` and a threshold every row breaks, each row is an error of kind `quality` naming its flag and
    carries no audio."""
    from actors.engine.params import SamplingParams
    from actors.replica import Synthesizer
    from actors.requests import RefineOptions, SynthesisRequest

    def rows(**quality):
        synth = Synthesizer(model=str(tiny_checkpoint), device="cpu", cache_dir=tmp_path, max_slots=4,
                            quality=QualitySettings(**quality))  # fmt: skip
        params, refine = SamplingParams(max_new_tokens=40, seed=3), RefineOptions(enabled=False)
        requests = [SynthesisRequest(id=f"r{i}", text=f"row number {i} says hello.", params=params, refine=refine)
                    for i in range(3)]  # fmt: skip
        return synth.synthesize(requests)

    for result in rows():
        assert result.ok and result.quality is not None and result.quality.duration_s > 0
        assert result.quality_flags == QualityPolicy().flags(result.quality)
    for result in rows(on_fail="error", max_seconds_per_unit=0.001):
        assert result.error_kind == "quality" and "too_slow" in result.error and result.audio is None
        assert result.quality_flags and "too_slow" in result.quality_flags


def test_synth_writes_qc_columns_and_the_report_summary(tiny_checkpoint, tmp_path):
    import pyarrow.parquet as pq

    rows = [{"id": f"r{i}", "text": f"Row {i} of the quality check.", "refine": False} for i in range(3)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cmd = [
        sys.executable, "-m", "jobs.cli", "synth", "--model", str(tiny_checkpoint), "--input", str(tmp_path / "in.jsonl"),
        "--output", str(tmp_path / "out"), "--max-new-tokens", "40", "--device", "cpu", "--quality-max-pause-s", "9",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    table = pq.read_table(tmp_path / "out" / "part-00000.parquet").to_pylist()
    assert [r["id"] for r in table] == ["r0", "r1", "r2"]
    assert all(set(r["qc"]) >= {"duration_s", "loop_s", "rms_dbfs"} and isinstance(r["qc_flags"], list) for r in table)
    report = json.loads((tmp_path / "out" / "_report.json").read_text())
    assert report["qc"]["rows_measured"] == 3
    assert report["qc"]["rows_flagged"] == sum(bool(r["qc_flags"]) for r in table)


def test_the_thresholds_are_part_of_a_jobs_identity():
    """A re-run with other thresholds gives what a fresh run would: its rows' flags follow the new thresholds."""
    from pipeline.config import JobConfig
    from pipeline.identity import job_settings

    def settings_of(**engine):
        config = JobConfig.model_validate({"inputs": {"text": ["x"]}, "output": {"path": "o"}, "engine": engine})
        return job_settings(config, "sha", "rules")

    assert settings_of()["engine"]["quality"] == QualitySettings().model_dump()
    assert settings_of(quality={"max_pause_s": 3}) != settings_of()


def test_retakes_end_every_faulty_row_clean_and_the_kept_seed_reproduces_its_audio(tiny_checkpoint, tmp_path):
    """Faults are injected for chosen seeds (the tiny random model makes no real ones): this replica's join flags
    every take whose seed is in `bad`, as a loop. Under on_fail: retake each affected row is taken again with the
    next seed until a clean take, within max_attempts; rows that were clean keep their one take; the kept seed,
    synthesised again, gives the kept audio exactly. A row whose every take is bad keeps its best take, flagged."""
    from actors.audio import to_pcm16
    from actors.engine.params import SamplingParams
    from actors.replica import Synthesizer
    from actors.requests import RefineOptions, SynthesisRequest

    bad = {3, 4, 10}

    class Faulty(Synthesizer):
        def join(self, results, parts):
            super().join(results, parts)
            for result in results:
                seed = result.seed if result.seed is not None else int(result.id.split("-")[1])
                if result.ok and seed in bad:
                    result.quality_flags = [*result.quality_flags, "loop"]

    def synth(on_fail: str, max_attempts: int = 3) -> Synthesizer:
        # thresholds no take of the tiny random model breaks: only the injected loops flag a take
        lenient = QualitySettings(
            on_fail=on_fail, max_attempts=max_attempts, allow_truncated=True, min_seconds_per_unit=0,
            max_seconds_per_unit=1e6, max_lead_silence_s=1e6, max_trail_silence_s=1e6, max_pause_s=1e6,
            min_rms_dbfs=-1e6, max_clipped_share=1, max_loop_s=1e6,
        )  # fmt: skip
        return Faulty(model=str(tiny_checkpoint), device="cpu", cache_dir=tmp_path, max_slots=4, quality=lenient)

    def requests(seeds):
        refine = RefineOptions(enabled=False)
        return [SynthesisRequest(id=f"s-{s}", text="a row to check.", refine=refine,
                                 params=SamplingParams(max_new_tokens=30, seed=s)) for s in seeds]  # fmt: skip

    results = synth("retake").synthesize(requests([1, 3, 10]))
    assert [(r.attempts, r.seed, r.quality_flags) for r in results] == [(1, None, []), (3, 5, []), (2, 11, [])]
    again = synth("keep").synthesize(requests([5, 11]))
    for replay, kept in zip(again, results[1:], strict=True):  # the same codes, the audio to one PCM16 step
        np.testing.assert_array_equal(replay.codes, kept.codes)
        assert np.max(np.abs(to_pcm16(replay.audio).astype(int) - to_pcm16(kept.audio).astype(int))) <= 1
    worst = synth("retake", max_attempts=2).synthesize(requests([3]))[0]  # seeds 3 and 4 both bad
    assert worst.ok and worst.attempts == 2 and worst.quality_flags == ["loop"]


def test_the_summary_of_whole_columns_equals_the_row_by_row_summary():
    """`QualitySummary.add_columns` (Arrow kernels over a part) counts exactly what `add` counts row by row: rows
    without measures, null flags and attempts, ASR rates on some rows, values on the histogram edges."""
    import pyarrow as pa

    from actors.quality import arrow_type

    rng = np.random.default_rng(4)
    rows = []
    for i in range(400):
        made = FAULTS[list(FAULTS)[i % len(FAULTS)]][1](clean(rng), rng) if i % 3 else clean(rng)
        measures = measure(*made).as_dict() if i % 7 else None
        if measures and i % 11 == 0:
            measures["loop_s"] = 2.0  # exactly on an edge
        flags = (
            None if i % 13 == 0 else QualityPolicy().flags(measure(*made)) + (["asr_mismatch"] if i % 5 == 0 else [])
        )
        attempts = None if i % 17 == 0 else int(rng.integers(1, 4))
        rate = float(rng.choice([0.0, 0.35, 0.5, 2.0])) if i % 4 == 0 else None
        rows.append((measures, flags, attempts, rate))
    by_row, by_columns = QualitySummary(), QualitySummary()
    for row in rows:
        by_row.add(*row)
    columns = list(zip(*rows, strict=True))
    types = (arrow_type(), pa.list_(pa.string()), pa.int32(), pa.float64())
    by_columns.add_columns(*(pa.array(list(values), kind) for values, kind in zip(columns, types, strict=True)))
    assert by_columns.to_dict() == by_row.to_dict()
    empty = QualitySummary()
    empty.add_columns(pa.array([], arrow_type()), pa.array([], pa.list_(pa.string())), pa.array([], pa.int32()))
    assert empty.to_dict() == QualitySummary().to_dict()
