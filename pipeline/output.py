"""The output row layout shared by `raytts synth` and `raytts run`, and its Parquet writer.

`audio` is a struct {bytes, path} holding an encoded audio file: the Hugging Face `datasets` Audio layout, so
`datasets` decodes it without extra code; pandas and duckdb read every column as plain data. Rows that failed
keep their id and text, carry `error`, and have null audio.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from actors.model.config import SAMPLE_RATE

if TYPE_CHECKING:  # torch-free at import: the store stage encodes audio without loading the model
    from actors.replica import SynthesisResult

# Format name (also the file extension) -> soundfile container and subtype. flac and wav are lossless 16-bit; ogg
# (Vorbis) and opus (Ogg Opus, 24 kHz is one of Opus' native rates) are lossy and several times smaller. Each decodes to
# exactly the stored `num_samples` (libsndfile trims Opus' pre-skip and padding).
AUDIO_FORMATS = {
    "flac": ("FLAC", "PCM_16"),
    "wav": ("WAV", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "opus": ("OGG", "OPUS"),
}

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
        ("error", pa.string()),
    ]
)

# Column types in Hugging Face `datasets` terms, stored in the Parquet metadata so `Audio` decodes on load.
_HF_FEATURES = {
    "id": {"dtype": "string", "_type": "Value"},
    "text": {"dtype": "string", "_type": "Value"},
    "audio": {"sampling_rate": SAMPLE_RATE, "_type": "Audio"},
    "sample_rate": {"dtype": "int32", "_type": "Value"},
    "num_samples": {"dtype": "int64", "_type": "Value"},
    "duration_s": {"dtype": "float64", "_type": "Value"},
    "speaker": {"dtype": "string", "_type": "Value"},
    "seed": {"dtype": "int64", "_type": "Value"},
    "segments": {"dtype": "int32", "_type": "Value"},
    "truncated_segments": {"dtype": "int32", "_type": "Value"},
    # "Sequence" (not 4.x's "List"): every `datasets` version reads it (4.x+ as List(List(int16))).
    "codes": {"feature": {"feature": {"dtype": "int16", "_type": "Value"}, "_type": "Sequence"}, "_type": "Sequence"},
    "model": {"dtype": "string", "_type": "Value"},
    "error": {"dtype": "string", "_type": "Value"},
}


def hf_metadata(extra_features: dict | None = None) -> dict[str, str]:
    return {"huggingface": json.dumps({"info": {"features": {**_HF_FEATURES, **(extra_features or {})}}})}


SCHEMA_WITH_METADATA = SCHEMA.with_metadata(hf_metadata())


def encode_audio(audio: np.ndarray, sample_rate: int = SAMPLE_RATE, fmt: str = "flac") -> bytes:
    """float32 mono (clipped to [-1, 1] first: 16-bit formats would wrap) or int16 PCM -> an encoded file."""
    if fmt not in AUDIO_FORMATS:
        raise ValueError(f"audio format must be one of {sorted(AUDIO_FORMATS)}, got {fmt!r}")
    import soundfile as sf  # here, not at import: the CLI imports this module and GPU images may lack soundfile

    container, subtype = AUDIO_FORMATS[fmt]
    buffer = io.BytesIO()
    samples = audio if audio.dtype == np.int16 else np.clip(audio, -1.0, 1.0)
    sf.write(buffer, samples, sample_rate, format=container, subtype=subtype)
    return buffer.getvalue()


def result_row(
    result: SynthesisResult,
    speaker: str | None,
    seed: int | None,
    model: str,
    save_codes: bool,
    fmt: str = "flac",
) -> dict:
    ok = result.error is None and result.audio is not None
    num_samples = int(result.audio.shape[0]) if ok else None
    return {
        "id": result.id or None,
        "text": result.text,
        "audio": {"bytes": encode_audio(result.audio, result.sample_rate, fmt), "path": f"{result.id}.{fmt}"}
        if ok
        else None,
        "sample_rate": result.sample_rate if ok else None,
        "num_samples": num_samples,
        "duration_s": num_samples / result.sample_rate if ok else None,
        "speaker": speaker,
        "seed": seed,
        "segments": result.segments if ok else None,
        "truncated_segments": result.truncated_segments if ok else None,
        "codes": result.codes.tolist() if ok and save_codes and result.codes is not None else None,
        "model": model,
        "error": result.error,
    }


class ParquetSink:
    """Append row dicts to one Parquet file, a row group per call."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = pq.ParquetWriter(str(self.path), SCHEMA_WITH_METADATA)
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
