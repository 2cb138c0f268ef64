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
from typing import TYPE_CHECKING

from actors.quality import QualitySummary
from actors.replica import build_synthesizer
from actors.requests import SynthesisRequest, SynthesisResult, with_source
from actors.rows import RowDefaults, failed, request_for_row
from actors.settings import (
    SYNTH_MAX_RESERVE,
    SYNTH_ROW_RESERVE,
    EngineSettings,
    RefineSettings,
    SamplingSettings,
)
from actors.text import DEFAULT_NORMALIZE, Reading
from actors.validation import RequestError
from actors.voices import RowVoices, read_reference_audio
from pipeline.inputs import InputRow, mark_duplicates, read_jsonl, unknown_fields, unknown_fields_note
from pipeline.output import ParquetSink, result_row

if TYPE_CHECKING:
    from actors.replica import Synthesizer

log = logging.getLogger(__name__)


@dataclass
class SynthOptions:
    model: str | None
    input: Path
    output: Path
    speaker: str | None = None
    sampling: SamplingSettings = field(default_factory=SamplingSettings)  # defaults for rows without overrides
    engine: EngineSettings = field(default_factory=EngineSettings)
    save_codes: bool = False
    normalize: str = DEFAULT_NORMALIZE  # full, upstream or off (actors/text.py)
    strict_text: bool = False  # rows with characters the model cannot say fail instead of losing them
    reading: Reading = field(default_factory=Reading)  # ambiguous dates' order and the user's replacements
    refine: RefineSettings = field(default_factory=RefineSettings)  # the refine-text stage (rows may override it)
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
    dropped_chars_rows: int = 0  # ok rows whose text lost characters the model cannot say (`dropped_chars`)
    reading_notes_rows: int = 0  # ok rows read by a replacement or a guess (`reading_notes`)
    qc: QualitySummary = field(default_factory=QualitySummary)  # flag counts and distributions of the measures
    refine_only_rows: int = 0  # ok rows whose result is their refined text, without audio (refine only)
    output: str = ""
    engine: dict = field(default_factory=dict)  # the replica's plan (slots, blocks, budget and its source), accounting

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
            "dropped_chars_rows": self.dropped_chars_rows,
            "reading_notes_rows": self.reading_notes_rows,
            "qc": self.qc.to_dict(),
            "refine_only_rows": self.refine_only_rows,
            "output": self.output,
            "engine": self.engine,
            "failures": self.failures,
        }


class _References:
    """Reference audio encoded once per file for the whole run (`actors.voices.RowVoices.encode_file`)."""

    def __init__(self, synthesizer: Synthesizer, base: Path) -> None:
        self.synthesizer = synthesizer
        self.base = base
        self.cache: dict[str, object] = {}

    def codes(self, spec: str) -> object:
        if spec not in self.cache:
            try:
                path = spec if "://" in spec or Path(spec).is_absolute() else str(self.base / spec)
                audio, rate = read_reference_audio(path, name=spec)  # errors name the file as the row did
                self.cache[spec] = self.synthesizer.encode_reference(audio, rate)
            except RequestError as err:
                self.cache[spec] = err
        found = self.cache[spec]
        if isinstance(found, RequestError):
            raise found
        return found


def run_synth(options: SynthOptions) -> tuple[int, SynthReport]:
    started = time.perf_counter()
    rows = list(read_jsonl(options.input))
    mark_duplicates(rows)
    note = unknown_fields_note(unknown_fields(rows))
    if note:
        log.warning("%s", note)
    synthesizer = build_synthesizer(
        options.model,
        options.engine,
        max_new_tokens=reserved_new_tokens(rows, options.sampling.max_new_tokens),
        refine=options.refine,
    )
    sampling = options.sampling.params()
    sampling.validate(synthesizer.config.gpt.num_vq)
    defaults = RowDefaults(
        sampling, options.speaker, options.normalize, options.strict_text, options.refine.options(),
        reading=options.reading,
    )  # fmt: skip
    references = _References(synthesizer, options.input.parent)
    voices = RowVoices(options.speaker, {}, encode_file=references.codes)
    plan = synthesizer.plan
    report = SynthReport(output=str(options.output / "part-00000.parquet"))
    report.engine = {
        "backend": synthesizer.backend,
        **(
            {"onnx": {"export": str(synthesizer.model.folder), "quantize": synthesizer.model.quantize}}
            if synthesizer.backend == "onnx"
            else {}
        ),  # fmt: skip
        "slots": plan.slots,
        "slot_tokens": plan.slot_tokens,
        "kv_blocks": plan.pool_blocks,
        "block_size": plan.block_size,
        "budget_mib": round(synthesizer.budget_bytes / 2**20),
        "budget_source": synthesizer.budget_source,
    }
    with ParquetSink(options.output / "part-00000.parquet") as sink:
        for start in range(0, len(rows), options.chunk_rows):
            chunk = rows[start : start + options.chunk_rows]
            results, columns = _synthesize_chunk(chunk, synthesizer, defaults, voices)
            out = []
            model_id = synthesizer.checkpoint.model_id
            for row, result, (speaker, seed) in zip(chunk, results, columns, strict=True):
                out.append(
                    result_row(result, row.source, speaker, seed, model_id, options.save_codes, options.audio_format)
                )
                report.rows += 1
                report.qc.add(out[-1]["qc"], out[-1]["qc_flags"], out[-1]["qc_attempts"])
                if out[-1]["error"]:
                    report.failed += 1
                    report.failures.append({"id": result.id or None, "error": out[-1]["error"]})
                else:
                    report.ok += 1
                    report.audio_seconds += out[-1]["duration_s"] or 0.0
                    report.dropped_chars_rows += bool(out[-1]["dropped_chars"])
                    report.reading_notes_rows += bool(out[-1]["reading_notes"])
                    report.refine_only_rows += result.refine_only
            sink.write(out)
            log.info("synth: %d/%d rows written", report.rows, len(rows))
    report.wall_seconds = time.perf_counter() - started
    report.engine["accounting"] = synthesizer.batcher.stats.accounting()
    stats = synthesizer.stats
    report.engine["refine"] = {
        "refined_segments": stats.refined_segments,
        "refined_tokens": stats.refined_tokens,
        "fallbacks": stats.refine_fallbacks,
    }
    (options.output / "_report.json").write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
    return (0 if report.failed == 0 else 1), report


def reserved_new_tokens(rows: list[InputRow], default: int) -> int:
    """New tokens each slot reserves: the most any row may generate, `default` (--max-new-tokens) or a row's own
    valid max_new_tokens up to SYNTH_ROW_RESERVE; at most SYNTH_MAX_RESERVE. A row asking more than the reservation
    fails on its own with the replica's limit in its error."""
    asked = [row.fields.get("max_new_tokens") for row in rows if row.error is None]
    valid = [int(v) for v in asked if isinstance(v, int | float) and not isinstance(v, bool) and float(v).is_integer()]
    rows_ask = max([1, *(v for v in valid if v >= 1)])
    return min(SYNTH_MAX_RESERVE, max(default, min(SYNTH_ROW_RESERVE, rows_ask)))


def _synthesize_chunk(
    chunk: list[InputRow], synthesizer: Synthesizer, defaults: RowDefaults, voices: RowVoices
) -> tuple[list[SynthesisResult], list[tuple[str | None, int | None]]]:
    """Each row's result and (speaker, seed) columns, through the one row path (`actors.rows`)."""
    results: list[SynthesisResult | None] = [None] * len(chunk)
    columns: list[tuple[str | None, int | None]] = [(None, None)] * len(chunk)
    requests: dict[int, SynthesisRequest] = {}
    for i, row in enumerate(chunk):
        text = row.fields.get("text")
        if row.error:
            results[i] = failed(row.id, text, row.error)
            continue
        try:
            request, speaker = request_for_row(row.source, row.id, row.fields, defaults, voices)
        except RequestError as err:
            results[i] = failed(row.id, text, str(err))
            continue
        requests[i] = request
        columns[i] = (speaker, request.params.seed)
    pending = sorted(requests)
    for i, result in zip(pending, synthesizer.synthesize([requests[i] for i in pending]), strict=True):
        if result.error:
            result.error = with_source(result.error, chunk[i].source)
        results[i] = result
    return results, columns  # type: ignore[return-value]
