"""The job's progress as a person reads it: rows stored of this run's total, rows and audio-seconds per second,
failures so far and an ETA, every `interval` seconds and once at the end, in the driver's log and in the running
`_report.json` (so `cat OUTPUT/_report.json` answers "how far along is it?" for a job started elsewhere). Ray Data's
own bars count blocks per operator; this counts the rows the store stage has written, from the one summary row per
block the driver receives."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

INTERVAL_S = 10.0


@dataclass
class Progress:
    total: int  # rows this run synthesises
    interval: float = INTERVAL_S
    clock: Callable[[], float] = time.monotonic
    publish: Callable[[dict[str, Any]], None] | None = None  # e.g. the running report's writer
    rows: int = 0
    failed: int = 0
    audio_seconds: float = 0.0
    started: float = field(default=0.0)
    _last: float = field(default=0.0)

    def __post_init__(self) -> None:
        self.started = self._last = self.clock()

    def add(self, rows: int, failed: int, audio_seconds: float) -> None:
        """One stored block's counts; says the progress when `interval` has passed since it last did."""
        self.rows += rows
        self.failed += failed
        self.audio_seconds += audio_seconds
        if self.clock() - self._last >= self.interval:
            self.say()

    def state(self) -> dict[str, Any]:
        elapsed = max(self.clock() - self.started, 1e-9)
        rate = self.rows / elapsed
        left = max(self.total - self.rows, 0)
        return {
            "rows_done": self.rows,
            "rows_total": self.total,
            "failed_so_far": self.failed,
            "rows_per_second": round(rate, 3),
            "audio_seconds_per_second": round(self.audio_seconds / elapsed, 3),
            "elapsed_s": round(elapsed, 1),
            "eta_s": round(left / rate, 1) if rate > 0 else None,
        }

    def say(self) -> None:
        self._last = self.clock()
        state = self.state()
        log.info("progress: %s", line(state))
        if self.publish is not None:
            self.publish(state)


def line(state: dict[str, Any]) -> str:
    """`1,234 / 10,000 rows (12.3%), 45.6 rows/s, 210.3 audio-s/s, 3 failed, ETA 3m12s`."""
    done, total = state["rows_done"], state["rows_total"]
    share = f" ({100 * done / total:.1f}%)" if total else ""
    eta = state["eta_s"]
    when = "done" if done >= total else f"ETA {duration(eta)}" if eta is not None else "ETA unknown"
    return (
        f"{done:,} / {total:,} rows{share}, {state['rows_per_second']:.1f} rows/s, "
        f"{state['audio_seconds_per_second']:.1f} audio-s/s, {state['failed_so_far']:,} failed, {when}"
    )


def duration(seconds: float) -> str:
    """3725 -> '1h02m05s', 192 -> '3m12s', 7 -> '7s'."""
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
