"""The output row of `raytts synth` and `raytts run`: its schema, the one way a row's audio columns are made
(`audio_fields`), the row of a synthesis result (`result_row`), and a Parquet writer.

`audio` is a struct {bytes, path} holding an encoded audio file: the Hugging Face `datasets` Audio layout, so
`datasets` decodes it without extra code; pandas and duckdb read every column as plain data. Rows that failed
keep their id and text, carry `error`, and have null audio.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from actors.audio import AUDIO_FORMATS, encode_audio, to_pcm16
from actors.model.config import SAMPLE_RATE
from actors.quality import arrow_type as quality_arrow_type

if TYPE_CHECKING:  # torch-free at import: the store stage encodes audio without loading the model
    from actors.requests import SynthesisResult

__all__ = ["AUDIO_FORMATS", "SCHEMA", "ParquetSink", "audio_fields", "hf_metadata", "parquet_options", "result_row"]

AUDIO_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("audio", AUDIO_TYPE),
        ("sample_rate", pa.int32()),
        ("num_samples", pa.int64()),
        ("duration_s", pa.float64()),
        ("speaker", pa.string()),
        ("seed", pa.int64()),
        ("segments", pa.int32()),
        ("truncated_segments", pa.int32()),
        ("codes", pa.list_(pa.list_(pa.int16()))),
        ("model", pa.string()),
        ("source", pa.string()),  # file:line of the input row
        ("error", pa.string()),
        ("error_kind", pa.string()),  # input, model, engine or output (`actors.rows.ERROR_KINDS`)
        ("spoken_text", pa.string()),
        ("dropped_chars", pa.string()),
        ("reading_notes", pa.string()),  # what the reading replaced or had to guess ("" when nothing)
        ("qc", quality_arrow_type()),  # the row's quality measures (`actors.quality`; null without audio)
        ("qc_flags", pa.list_(pa.string())),  # the flags they raised under engine.quality
        ("qc_attempts", pa.int32()),  # takes made of the row (engine.quality.on_fail: retake); the best was kept
        ("asr_text", pa.string()),  # what the ASR round trip heard (`asr.enabled`; null when it did not run)
        ("asr_error_rate", pa.float64()),  # its word (character, for Chinese) error rate against spoken_text
    ]
)


def _feature(field_type: pa.DataType) -> dict:
    """A column's Hugging Face `datasets` feature, from its Arrow type (the one definition is the schema)."""
    if pa.types.is_list(field_type):
        # "Sequence" (not 4.x's "List"): every `datasets` version reads it (4.x+ as List(...)).
        return {"feature": _feature(field_type.value_type), "_type": "Sequence"}
    if pa.types.is_struct(field_type):
        return {child.name: _feature(child.type) for child in field_type}
    name = {"double": "float64", "float": "float32"}.get(str(field_type), str(field_type))
    return {"dtype": name, "_type": "Value"}


def hf_metadata(schema: pa.Schema) -> dict[str, str]:
    """The Parquet metadata that makes `datasets` read `schema`'s columns as their features (`audio` as Audio)."""
    features = {
        field.name: {"sampling_rate": SAMPLE_RATE, "_type": "Audio"} if field.name == "audio" else _feature(field.type)
        for field in schema
    }
    return {"huggingface": json.dumps({"info": {"features": features}})}


SCHEMA_WITH_METADATA = SCHEMA.with_metadata(hf_metadata(SCHEMA))


NO_AUDIO = {"audio": None, "sample_rate": None, "num_samples": None, "duration_s": None}
# A row that failed after synthesis (no audio, or its file could not be written): like every error row, it carries
# neither audio nor what was spoken.
FAILED_OUTPUT = {**NO_AUDIO, "spoken_text": None, "dropped_chars": None, "reading_notes": None}


def audio_fields(row_id: str, pcm: np.ndarray, fmt: str) -> dict:
    """The audio columns of a row with 16-bit samples `pcm` (`actors.audio.to_pcm16`): the encoded file named
    `{id}.{format}`, its rate, length and duration."""
    data = encode_audio(pcm, SAMPLE_RATE, fmt)
    return {
        "audio": {"bytes": data, "path": f"{row_id}.{fmt}"},
        "sample_rate": SAMPLE_RATE,
        "num_samples": int(pcm.size),
        "duration_s": pcm.size / SAMPLE_RATE,
    }


def no_audio_error(error: str | None, pcm_samples: int, source: str) -> str | None:
    """A row's error: its own, or, for a row that produced no samples, that it did not (never an empty file)."""
    if error is None and pcm_samples == 0:
        return f"{source}: no audio was produced"
    return error


def result_row(
    result: SynthesisResult,
    source: str,
    speaker: str | None,
    seed: int | None,
    model: str,
    save_codes: bool,
    fmt: str = "flac",
) -> dict:
    """The output row of one synthesis result (`raytts synth`): the job's columns (`actors.rows.result_columns`)
    with its audio quantised and encoded as `raytts run` stores it."""
    from actors.rows import result_columns

    pcm = to_pcm16(result.audio) if result.audio is not None else np.zeros(0, np.int16)
    row = result_columns(result, source, speaker, seed, model, save_codes)
    if result.refine_only and result.error is None:
        return {**row, **NO_AUDIO}
    error = no_audio_error(result.error, pcm.size, source)
    if error is not None:
        kind = row["error_kind"] or "model"
        return {**row, **FAILED_OUTPUT, "error": error, "error_kind": kind, "segments": None,
                "truncated_segments": None, "codes": None, "speaker": speaker, "seed": seed}  # fmt: skip
    return {**row, **audio_fields(result.id, pcm, fmt)}


AUDIO_BYTES = "audio.bytes"  # the encoded files' column (its Parquet path)


def parquet_options(schema: pa.Schema) -> dict[str, Any]:
    """`pq.write_table` / `pq.ParquetWriter` keywords for tables of `schema`: Parquet's defaults (dictionary, snappy)
    on every column but the encoded audio's bytes, which never repeat and do not compress: trying both cost the store
    stage ~2 ms of a 17-second row for nothing (benchmarks/RESULTS.md, "The CPU stages around an engine")."""
    buffer = io.BytesIO()
    pq.write_table(schema.empty_table(), buffer)
    buffer.seek(0)
    layout = pq.ParquetFile(buffer).schema
    paths = [layout.column(i).path for i in range(len(layout))]
    return {
        "use_dictionary": [path for path in paths if path != AUDIO_BYTES],
        "compression": {path: "none" if path == AUDIO_BYTES else "snappy" for path in paths},
    }


class ParquetSink:
    """Append row dicts to one Parquet file, a row group per call."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = pq.ParquetWriter(str(self.path), SCHEMA_WITH_METADATA, **parquet_options(SCHEMA_WITH_METADATA))
        self.rows = 0

    def write(self, rows: list[dict]) -> None:
        if rows:
            self._writer.write_table(pa.Table.from_pylist(rows, schema=SCHEMA_WITH_METADATA))
            self.rows += len(rows)

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> ParquetSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
