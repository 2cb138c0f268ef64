"""The one engine driver over a fake engine: the `Engine` protocol is the seam, so the driver's bookkeeping (order of
admission, joining segments, stream pieces in segment order, cancellation) is tested without torch or a model. The
fake is not a stand-in for a device: the real engine runs under the same driver in test_async_engine.py and
test_batcher.py."""

from __future__ import annotations

import numpy as np

from actors.driver import EngineDriver, Segment, SegmentAudio
from actors.requests import SynthesisRequest, SynthesisResult


class _Prompt:
    def __init__(self, tokens: int) -> None:
        self.token_ids = list(range(tokens))


class FakeEngine:
    """Each request's text is split at '|' into segments; segment `i` of a request is `len(piece)` samples of value
    (row * 10 + i). Segments finish in the order `finish_order` names them (default: reverse of submission), two
    stream pieces each."""

    def __init__(self) -> None:
        self.queue: list[tuple[object, Segment, bool]] = []
        self.submitted: list[object] = []
        self.cancelled: list[object] = []
        self.joined = 0

    @property
    def busy(self) -> bool:
        return bool(self.queue)

    def prepare(self, requests: list[SynthesisRequest]) -> tuple[list[SynthesisResult], list[Segment]]:
        results = [SynthesisResult(id=r.id, text=r.text) for r in requests]
        segments = []
        for row, request in enumerate(requests):
            if not request.text:
                results[row].error = "text is empty"
                continue
            for index, piece in enumerate(request.text.split("|")):
                segments.append(Segment(row, index, _Prompt(len(piece)), None))
        return results, segments

    def submit(self, segment: Segment, key: object, stream: bool = False) -> None:
        self.queue.append((key, segment, stream))
        self.submitted.append(key)

    def pump(self) -> list[SegmentAudio]:
        key, segment, stream = self.queue.pop()  # the last submitted finishes first
        value = float(segment.request * 10 + segment.index)
        audio = np.full(len(segment.prompt.token_ids), value, np.float32)
        codes = np.zeros((len(segment.prompt.token_ids), 4), np.int64)
        if stream:
            half = audio.size // 2
            return [SegmentAudio(key, audio[:half], None, False), SegmentAudio(key, audio[half:], codes, True, True)]
        return [SegmentAudio(key, audio, codes, True, True)]

    def cancel(self, keys) -> int:
        dropped = [key for key, _, _ in self.queue if keys(key)]
        self.queue = [item for item in self.queue if not keys(item[0])]
        self.cancelled.extend(dropped)
        return len(dropped)

    def join(self, results: list[SynthesisResult], parts) -> None:
        self.joined += 1
        for row, row_parts in parts.items():
            ordered = [row_parts[i] for i in sorted(row_parts)]
            results[row].segments = len(ordered)
            results[row].audio = np.concatenate([part.audio for part in ordered])

    def retake(self, request: SynthesisRequest, best: SynthesisResult, attempts: int) -> SynthesisRequest | None:
        return None  # no quality policy: one take per row

    def better(self, result: SynthesisResult, than: SynthesisResult) -> bool:
        return False


def test_whole_calls_go_longest_first_and_join_segments_in_order():
    engine = FakeEngine()
    driver = EngineDriver(engine)
    requests = [SynthesisRequest("a", "xx|yyyy"), SynthesisRequest("b", ""), SynthesisRequest("c", "zzzzzz")]
    results = driver.run(requests)
    # admission: longest prompt first (6, 4, 2 tokens), keys (call, row, segment)
    assert engine.submitted == [(0, 2, 0), (0, 0, 1), (0, 0, 0)]
    assert [r.error for r in results] == [None, "text is empty", None]
    np.testing.assert_array_equal(results[0].audio, [0, 0, 1, 1, 1, 1])  # segment 0 before 1, though 1 ended later
    np.testing.assert_array_equal(results[2].audio, [20] * 6)
    assert results[0].segments == 2 and engine.joined == 1 and not driver.calls


def test_stream_pieces_come_out_in_segment_order_when_later_segments_finish_first():
    engine = FakeEngine()
    driver = EngineDriver(engine)
    call = driver.start([SynthesisRequest("s", "aaaa|bbbb|cccc")], stream=True)
    assert engine.submitted == [(0, 0, 0), (0, 0, 1), (0, 0, 2)]  # a stream goes in order
    seen: list[np.ndarray] = []
    while not call.done:
        driver.step()
        seen.extend(call.take_pieces())
    # segment 2 finished first, then 1, then 0: nothing is sent before segment 0, then everything in order
    np.testing.assert_array_equal(np.concatenate(seen), [0] * 4 + [1] * 4 + [2] * 4)
    assert call.results[0].segments == 3


def test_a_refused_stream_is_done_at_once_and_a_cancelled_call_leaves_the_engine():
    engine = FakeEngine()
    driver = EngineDriver(engine)
    refused = driver.start([SynthesisRequest("bad", "")], stream=True)
    assert refused.done and refused.results[0].error == "text is empty" and not engine.submitted
    kept = driver.start([SynthesisRequest("keep", "kk")])
    gone = driver.start([SynthesisRequest("gone", "gg|hh")])
    assert driver.cancel(gone) == 2 and engine.cancelled == [(2, 0, 0), (2, 0, 1)]
    assert driver.cancel(gone) == 0  # twice is harmless
    while not kept.done:
        driver.step()
    np.testing.assert_array_equal(kept.results[0].audio, [0, 0])
    assert not gone.done and list(driver.calls) == []
