"""`raytts synth`: in-process synthesis of a JSONL file to Parquet, without Ray.

Every input line yields exactly one output row, in input order; a bad line gets `error` and the job goes on.
Exit status: 0 when every row succeeded, 1 when any row failed (the report lists them), 2 for a fatal problem
(unreadable input file, unloadable model).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from actors.engine.sampling import SamplingParams
from actors.replica import RequestError, SynthesisRequest, SynthesisResult, Synthesizer, reference_codes_from_prompt
from pipeline.inputs import InputRow, mark_duplicates, read_jsonl, to_request, unknown_fields
from pipeline.output import ParquetSink, result_row

log = logging.getLogger(__name__)


@dataclass
class SynthOptions:
    model: str | None
    input: Path
    output: Path
    speaker: str | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)  # defaults for rows without overrides
    save_codes: bool = False
    normalize: bool = True
    decoder: str = "hidden"
    device: str = "auto"
    dtype: str | None = None
    max_batch_size: int = 16
    max_segment_tokens: int = 120
    fsq: str = "classic"
    verify: str = "auto"
    compile: str = "off"
    audio_format: str = "flac"
    chunk_rows: int = 256


@dataclass
class SynthReport:
    rows: int = 0
    ok: int = 0
    failed: int = 0
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    failures: list[dict] = field(default_factory=list)
    output: str = ""

    @property
    def audio_seconds_per_second(self) -> float:
        return self.audio_seconds / self.wall_seconds if self.wall_seconds else 0.0

    def to_dict(self) -> dict:
        return {
            "rows": self.rows,
            "ok": self.ok,
            "failed": self.failed,
            "audio_seconds": round(self.audio_seconds, 3),
            "wall_seconds": round(self.wall_seconds, 3),
            "audio_seconds_per_second": round(self.audio_seconds_per_second, 3),
            "output": self.output,
            "failures": self.failures,
        }


class _References:
    """Reference audio encoded once per file for the whole run."""

    def __init__(self, synthesizer: Synthesizer, base: Path) -> None:
        self.synthesizer = synthesizer
        self.base = base
        self.cache: dict[str, object] = {}

    def codes(self, spec: str):
        if spec not in self.cache:
            try:
                self.cache[spec] = self._encode(spec)
            except RequestError as err:
                self.cache[spec] = err
        found = self.cache[spec]
        if isinstance(found, RequestError):
            raise found
        return found

    def _encode(self, spec: str):
        import soundfile as sf
        from smart_open import open as sopen

        path = spec if "://" in spec or Path(spec).is_absolute() else str(self.base / spec)
        try:
            with sopen(path, "rb") as f:
                audio, rate = sf.read(f, dtype="float32", always_2d=False)
        except (OSError, RuntimeError, ValueError, sf.LibsndfileError) as err:
            raise RequestError(f"reference audio {spec!r} could not be read ({err})") from None
        return self.synthesizer.encode_reference(np.asarray(audio), int(rate))


def run_synth(options: SynthOptions) -> tuple[int, SynthReport]:
    started = time.perf_counter()
    rows = list(read_jsonl(options.input))
    mark_duplicates(rows)
    extra = unknown_fields(rows)
    if extra:
        log.warning("ignoring unknown input fields %s (known: id, text, speaker, seed, ...)", sorted(extra))
    synthesizer = Synthesizer(
        model=options.model,
        device=options.device,
        dtype=options.dtype,
        decoder=options.decoder,
        max_batch_size=options.max_batch_size,
        # Reserve room for the requested length (rows may still ask for less, or more up to this).
        max_new_tokens=max(2048, options.sampling.max_new_tokens),
        max_segment_tokens=options.max_segment_tokens,
        fsq_variant=options.fsq,
        verify=options.verify,
        compile=options.compile,
    )
    defaults = options.sampling
    defaults.validate(synthesizer.config.gpt.num_vq)
    references = _References(synthesizer, options.input.parent)
    report = SynthReport(output=str(options.output / "part-00000.parquet"))
    with ParquetSink(options.output / "part-00000.parquet") as sink:
        for start in range(0, len(rows), options.chunk_rows):
            chunk = rows[start : start + options.chunk_rows]
            results, requests = _synthesize_chunk(chunk, synthesizer, defaults, options, references)
            out = []
            for result, request in zip(results, requests, strict=True):
                speaker = request.speaker if request else options.speaker
                seed = request.params.seed if request else None
                out.append(
                    result_row(
                        result, speaker, seed, synthesizer.checkpoint.model_id, options.save_codes, options.audio_format
                    )
                )
                report.rows += 1
                if result.error:
                    report.failed += 1
                    report.failures.append({"id": result.id or None, "error": result.error})
                else:
                    report.ok += 1
                    report.audio_seconds += out[-1]["duration_s"]
            sink.write(out)
            log.info("synth: %d/%d rows written", report.rows, len(rows))
    report.wall_seconds = time.perf_counter() - started
    (options.output / "_report.json").write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
    return (0 if report.failed == 0 else 1), report


def _synthesize_chunk(
    chunk: list[InputRow],
    synthesizer: Synthesizer,
    defaults: SamplingParams,
    options: SynthOptions,
    references: _References,
) -> tuple[list[SynthesisResult], list[SynthesisRequest | None]]:
    results: list[SynthesisResult | None] = [None] * len(chunk)
    requests: list[SynthesisRequest | None] = [None] * len(chunk)
    pending: list[int] = []
    for i, row in enumerate(chunk):
        text = row.fields.get("text") if isinstance(row.fields.get("text"), str) else ""
        if row.error:
            results[i] = SynthesisResult(id=row.id or "", text=text, error=row.error)
            continue
        try:
            request = to_request(row, defaults, options.speaker, options.normalize)
            if row.fields.get("reference_audio"):
                request.reference_codes = references.codes(str(row.fields["reference_audio"]))
            elif row.fields.get("reference_codes"):
                request.reference_codes = reference_codes_from_prompt(str(row.fields["reference_codes"]))
        except RequestError as err:
            message = str(err) if str(err).startswith(row.source) else f"{row.source}: {err}"
            results[i] = SynthesisResult(id=row.id or "", text=text, error=message)
            continue
        requests[i] = request
        pending.append(i)
    for i, result in zip(pending, synthesizer.synthesize([requests[i] for i in pending]), strict=True):
        if result.error and not result.error.startswith(chunk[i].source):
            result.error = f"{chunk[i].source}: {result.error}"
        results[i] = result
    return results, requests  # type: ignore[return-value]
