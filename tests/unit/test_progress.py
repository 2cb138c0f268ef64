"""The job's progress line (`pipeline.progress`): counts, rates and ETA from the stored blocks, said every interval
and published to the running report, on a fake clock."""

from __future__ import annotations

import logging

import pytest

from pipeline.progress import Progress, duration, line


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_progress_is_said_every_interval_with_rates_and_eta(caplog: pytest.LogCaptureFixture) -> None:
    clock, published = Clock(), []
    progress = Progress(total=1000, interval=10, clock=clock, publish=published.append)
    caplog.set_level(logging.INFO, logger="pipeline.progress")
    clock.now += 4
    progress.add(rows=100, failed=1, audio_seconds=300.0)  # 4 s in: not yet
    assert published == []
    clock.now += 6
    progress.add(rows=100, failed=0, audio_seconds=300.0)  # 10 s in: said
    assert published == [{"rows_done": 200, "rows_total": 1000, "failed_so_far": 1, "rows_per_second": 20.0,
                          "audio_seconds_per_second": 60.0, "elapsed_s": 10.0, "eta_s": 40.0}]  # fmt: skip
    assert "200 / 1,000 rows (20.0%), 20.0 rows/s, 60.0 audio-s/s, 1 failed, ETA 40s" in caplog.text
    clock.now += 5
    progress.add(rows=50, failed=0, audio_seconds=10.0)  # 5 s after the last line: quiet
    assert len(published) == 1
    clock.now += 45
    progress.add(rows=750, failed=2, audio_seconds=10.0)
    assert published[-1]["rows_done"] == 1000 and published[-1]["eta_s"] == 0.0
    assert line(published[-1]).endswith("3 failed, done")


def test_a_job_with_nothing_stored_yet_has_no_eta() -> None:
    clock = Clock()
    progress = Progress(total=5, interval=10, clock=clock)
    clock.now += 3
    assert progress.state()["eta_s"] is None and line(progress.state()).endswith("ETA unknown")


@pytest.mark.parametrize(("seconds", "text"), [(7, "7s"), (192, "3m12s"), (3725, "1h02m05s"), (59.6, "1m00s")])
def test_duration(seconds: float, text: str) -> None:
    assert duration(seconds) == text
