"""CPU stage after the GPU stage: encode audio, write `{output}/audio/{id}.{format}` objects and the block's
Parquet part (pipeline/parts.py). Only a small summary per block goes back to the driver: the encoded audio is
never moved through the object store again."""

from __future__ import annotations

import os

import pyarrow as pa

from actors.model.config import SAMPLE_RATE

from .output import encode_audio
from .parts import RUN_SCHEMA, write_part

SUMMARY_SCHEMA = pa.schema([("part", pa.string()), ("rows", pa.int64()), ("failed", pa.int64())])


class StoreAudio:
    """Encodes each row's PCM, (optionally) writes it as an object through smart-open, and writes the rows (audio
    bytes included) as one Parquet part; returns one summary row per block."""

    def __init__(self, output: str, audio_format: str, audio_files: bool) -> None:
        self.output = output.rstrip("/")
        self.audio_format = audio_format
        self.audio_files = audio_files

    def __call__(self, table: pa.Table) -> pa.Table:
        from smart_open import open as sopen

        if table.num_rows == 0:
            return SUMMARY_SCHEMA.empty_table()
        # PCM stays in numpy: one flat int16 buffer plus offsets (to_pylist would box every sample).
        pcm = table.column("pcm").combine_chunks()
        samples_flat = pcm.values.to_numpy(zero_copy_only=False)
        bounds = pcm.offsets.to_numpy()
        batch = {name: table.column(name).to_pylist() for name in table.column_names if name != "pcm"}
        n = table.num_rows
        audio, rates, samples, durations = [], [], [], []
        errors = list(batch["error"])
        for i in range(n):
            pcm = samples_flat[bounds[i] : bounds[i + 1]]
            if errors[i] is not None or pcm.size == 0:
                audio.append(None)
                rates.append(None)
                samples.append(None)
                durations.append(None)
                if errors[i] is None:
                    errors[i] = f"{batch['source'][i]}: no audio was produced"
                continue
            data = encode_audio(pcm, SAMPLE_RATE, self.audio_format)
            path = f"{batch['id'][i]}.{self.audio_format}"
            if self.audio_files:
                path = f"{self.output}/audio/{path}"
                try:
                    if "://" not in path:
                        os.makedirs(os.path.dirname(path), exist_ok=True)
                    with sopen(path, "wb") as f:
                        f.write(data)
                except OSError as err:
                    errors[i] = f"{batch['source'][i]}: writing {path} failed ({err})"
                    audio.append(None)
                    rates.append(None)
                    samples.append(None)
                    durations.append(None)
                    continue
            audio.append({"bytes": data, "path": path})
            rates.append(SAMPLE_RATE)
            samples.append(int(pcm.size))
            durations.append(pcm.size / SAMPLE_RATE)
        rows = pa.Table.from_pydict({
            "id": list(batch["id"]),
            "text": list(batch["text"]),
            "audio": audio,
            "sample_rate": rates,
            "num_samples": samples,
            "duration_s": durations,
            "speaker": list(batch["speaker"]),
            "seed": list(batch["seed"]),
            "segments": list(batch["segments"]),
            "truncated_segments": list(batch["truncated_segments"]),
            "codes": list(batch["codes"]),
            "model": list(batch["model"]),
            "error": errors,
            "source": list(batch["source"]),
            "worker": list(batch["worker"]),
            "engine_occupancy": list(batch["engine_occupancy"]),
        }, schema=RUN_SCHEMA)  # fmt: skip
        part = write_part(rows, f"{self.output}/parts")
        failed = sum(e is not None for e in errors)
        return pa.Table.from_pydict({"part": [part], "rows": [n], "failed": [failed]}, schema=SUMMARY_SCHEMA)
