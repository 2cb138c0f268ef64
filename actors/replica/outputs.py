"""What a replica hands back: finished segments decoded to waveforms in groups that fit the decode reserve, streamed
segments decoded piece by piece as their frames arrive, and every request's segments joined in order."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..driver import Parts, SegmentAudio
from ..engine.batcher import FinishedRow, PartialRow
from ..engine.generate import decode_waveforms
from ..engine.memory import SlotPlan
from ..engine.stream import StreamDecoder
from ..quality import QualityMeasures, QualityPolicy, measure
from ..requests import SynthesisResult


@dataclass
class ReplicaStats:
    requests: int = 0
    failed: int = 0
    segments: int = 0
    frames: int = 0
    generate_s: float = 0.0
    decode_s: float = 0.0
    stream_chunks: int = 0
    refined_segments: int = 0
    refined_tokens: int = 0  # text tokens the refine stage generated (before the [break_0] filter)
    # refine stages whose text was empty, or too long for the prompt once re-encoded: the segment was spoken unrefined
    refine_fallbacks: int = 0


def to_host(tensor: torch.Tensor, dtype: type) -> np.ndarray:
    """One device-to-host copy into a host array that owns its memory (no view into engine buffers)."""
    out = np.empty(tuple(tensor.shape), dtype=dtype)
    torch.from_numpy(out).copy_(tensor)
    return out


class Outputs:
    def __init__(
        self,
        model: object,
        plan: SlotPlan,
        use_decoder: bool,
        stream_chunk_steps: int,
        decode_frame_bytes: int,
        stats: ReplicaStats,
    ) -> None:
        self.model, self.plan, self.use_decoder = model, plan, use_decoder
        self.stream_chunk_steps = max(1, stream_chunk_steps)
        self.decode_frame_bytes = decode_frame_bytes
        self.stats = stats
        self.streams: dict[object, StreamDecoder] = {}

    def open_stream(self, key: object) -> None:
        self.streams[key] = StreamDecoder(self.model, self.use_decoder)

    def cancel(self, keys: Callable[[object], bool]) -> None:
        for key in [k for k in self.streams if keys(k)]:
            del self.streams[key]

    def progress(self, partials: list[PartialRow]) -> list[SegmentAudio]:
        """New audio of streamed segments that produced `stream_chunk_steps` frames since their last piece (the rows
        are views into their slots: decoded now, before the next step refills them)."""
        out = []
        for partial in partials:
            stream = self.streams[partial.key]
            if partial.codes.shape[0] - stream.steps_seen >= self.stream_chunk_steps:
                chunk = self._piece(stream, partial.hidden if self.use_decoder else partial.codes, False)
                if chunk.size:
                    out.append(SegmentAudio(partial.key, chunk, None, done=False))
        return out

    def finished(self, rows: list[FinishedRow], refined: Callable[[object], str | None]) -> list[SegmentAudio]:
        """Code rows that ended: a streamed one's last piece, the others decoded whole in groups."""
        out: list[SegmentAudio] = []
        whole = [row for row in rows if row.key not in self.streams]
        for row in rows:
            if row.key in self.streams:
                stream = self.streams.pop(row.key)
                chunk = self._piece(stream, row.hidden if self.use_decoder else row.codes, True)
                codes = to_host(row.codes, np.int64)
                out.append(SegmentAudio(row.key, chunk, codes, True, row.finished, refined(row.key)))
                self.stats.segments += 1
                self.stats.frames += int(row.codes.shape[0])
        for group in self._groups(whole):
            for row, (audio, codes) in zip(group, self._decode(group), strict=True):
                out.append(SegmentAudio(row.key, audio, codes, True, row.finished, refined(row.key)))
        return out

    def _piece(self, stream: StreamDecoder, rows: torch.Tensor, final: bool) -> np.ndarray:
        started = time.perf_counter()
        stream.steps_seen = int(rows.shape[0])
        chunk = to_host(stream.push(rows, final=final).float(), np.float32)
        self.stats.stream_chunks += 1
        self.stats.decode_s += time.perf_counter() - started
        return chunk

    def _groups(self, rows: list[FinishedRow]) -> list[list[FinishedRow]]:
        """Consecutive groups whose padded Decoder + Vocos activations fit the plan's decode reserve."""
        groups: list[list[FinishedRow]] = []
        current: list[FinishedRow] = []
        longest = 0
        for row in sorted(rows, key=lambda r: int(r.codes.shape[0])):
            frames = 2 * max(longest, int(row.codes.shape[0]))
            if current and (len(current) + 1) * frames * self.decode_frame_bytes > self.plan.decode_bytes:
                groups.append(current)
                current, longest = [], 0
            current.append(row)
            longest = max(longest, int(row.codes.shape[0]))
        if current:
            groups.append(current)
        return groups

    def _decode(self, rows: list[FinishedRow]) -> list[tuple[np.ndarray, np.ndarray]]:
        started = time.perf_counter()
        inputs = [row.hidden if self.use_decoder else row.codes for row in rows]
        waves = decode_waveforms(self.model, inputs, self.use_decoder)
        # One device-to-host copy for the group's audio and one for its codes, straight into host arrays the
        # results own (so finished audio never holds device or engine memory).
        lengths = [int(w.shape[0]) for w in waves]
        audio_host = to_host(torch.cat(waves).float(), np.float32)
        codes_host = to_host(torch.cat([row.codes for row in rows]), np.int64)
        self.stats.segments += len(rows)
        self.stats.frames += int(codes_host.shape[0])
        self.stats.decode_s += time.perf_counter() - started
        out = []
        audio_at = codes_at = 0
        for row, n in zip(rows, lengths, strict=True):
            t = int(row.codes.shape[0])
            out.append((audio_host[audio_at : audio_at + n], codes_host[codes_at : codes_at + t]))
            audio_at += n
            codes_at += t
        return out


def judge(result: SynthesisResult, quality: QualityPolicy) -> None:
    """The result's quality measures and flags; under `on_fail: error` a flagged row becomes an error row."""
    result.quality = measure(result.audio, result.codes, result.spoken_text or "", result.truncated_segments)
    result.quality_flags = quality.flags(result.quality)
    if result.quality_flags and quality.on_fail == "error":
        result.error = (
            f"quality checks failed: {', '.join(result.quality_flags)} (measures: "
            f"{_brief(result.quality, result.quality_flags)}); retry with another seed, or set engine.quality.on_fail: "
            f"keep to write it flagged"
        )
        result.error_kind = "quality"
        result.audio = result.codes = None  # an error row carries no audio; its measures say why


_MEASURE_OF = {"truncated": "truncated_segments", "too_fast": "seconds_per_unit", "too_slow": "seconds_per_unit",
               "lead_silence": "lead_silence_s", "trail_silence": "trail_silence_s", "long_pause": "longest_pause_s",
               "too_quiet": "rms_dbfs", "clipped": "clipped_share", "loop": "loop_s"}  # fmt: skip


def _brief(measures: QualityMeasures, flags: list[str]) -> str:
    return ", ".join(f"{_MEASURE_OF[f]}={getattr(measures, _MEASURE_OF[f])}" for f in flags)


def join(results: list[SynthesisResult], parts: Parts, stats: ReplicaStats, quality: QualityPolicy) -> None:
    """Concatenate each request's segments in order into its result, and measure its quality (`actors.quality`)
    under its request's own policy, else `quality` (the replica's)."""
    for row, row_parts in parts.items():
        result = results[row]
        ordered = [row_parts[i] for i in sorted(row_parts)]
        result.segments = len(ordered)
        failed = [part.error for part in ordered if part.error]
        if failed:
            result.error, result.error_kind, result.spoken_text, result.dropped = failed[0], "engine", None, None
            result.notes = None
            continue
        if any(part.text is not None for part in ordered):  # refined: what was said is the refined text
            result.spoken_text = " ".join(part.text or "" for part in ordered)
        if all(part.codes is None for part in ordered):  # refine only: the text is the result
            result.refine_only = True
            continue
        result.truncated_segments = sum(1 for part in ordered if not part.eos)
        if any(part.codes.shape[0] == 0 for part in ordered):
            result.error = (
                "the model ended a segment before producing any audio (EOS at the first step); "
                "retry with another seed or set min_new_tokens >= 1"
            )
            result.error_kind = "model"
            continue
        result.audio = np.concatenate([part.audio for part in ordered])
        result.codes = np.concatenate([part.codes for part in ordered]).astype(np.int16)
        judge(result, result.quality_policy or quality)
    stats.requests += len(results)
    stats.failed += sum(1 for r in results if r.error)
