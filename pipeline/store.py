"""CPU stage after the GPU stage: encode audio, write `{output}/audio/{id}.{format}` objects and the block's
Parquet part (pipeline/parts.py). Only a small summary per block goes back to the driver: the encoded audio is
never moved through the object store again."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa

from .lease import LeaseToken
from .output import FAILED_OUTPUT, audio_fields, no_audio_error
from .parts import RUN_SCHEMA, write_part

SUMMARY_SCHEMA = pa.schema(
    [("part", pa.string()), ("rows", pa.int64()), ("failed", pa.int64()), ("seconds", pa.float64())]
)


class StoreAudio:
    """Encodes each row's PCM, (optionally) writes it as an object through smart-open, and writes the rows (audio
    bytes included) as one Parquet part; returns one summary row per block."""

    def __init__(self, output: str, audio_format: str, audio_files: bool, job_digest: str, lease: LeaseToken) -> None:
        self.output = output.rstrip("/")
        self.audio_format = audio_format
        self.audio_files = audio_files
        self.job_digest = job_digest
        self.lease = lease

    def __call__(self, table: pa.Table) -> pa.Table:
        if table.num_rows == 0:
            return SUMMARY_SCHEMA.empty_table()
        # PCM stays in numpy: one flat int16 buffer plus offsets (to_pylist would box every sample).
        pcm = table.column("pcm").combine_chunks()
        samples_flat = pcm.values.to_numpy(zero_copy_only=False)
        bounds = pcm.offsets.to_numpy()
        rows = table.drop_columns(["pcm"]).to_pylist()
        self.lease.check()  # the driver still holds the output: no audio file or part from a driver that lost it
        for i, row in enumerate(rows):
            row["job_digest"] = self.job_digest
            self._store(row, samples_flat[bounds[i] : bounds[i + 1]])
        self.lease.check()
        part = write_part(pa.Table.from_pylist(rows, schema=RUN_SCHEMA), f"{self.output}/parts")
        failed = sum(row["error"] is not None for row in rows)
        seconds = sum(row["duration_s"] or 0.0 for row in rows if row["error"] is None)
        summary = {"part": [part], "rows": [len(rows)], "failed": [failed], "seconds": [seconds]}
        return pa.Table.from_pydict(summary, schema=SUMMARY_SCHEMA)

    def _store(self, row: dict, pcm: np.ndarray) -> None:
        """Fill the row's audio columns (`pipeline.output.audio_fields`) and write its audio object; a row whose
        object cannot be written gets that error instead of audio."""
        from smart_open import open as sopen

        error = no_audio_error(row["error"], pcm.size, row["source"])
        if error is not None:
            row["error_kind"] = row.get("error_kind") or "model"  # no kind yet: it produced no samples
            row["error"] = error
            row.update(FAILED_OUTPUT)
            return
        fields = audio_fields(row["id"], pcm, self.audio_format)
        if self.audio_files:
            path = f"{self.output}/audio/{fields['audio']['path']}"
            try:
                if "://" not in path:
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                with sopen(path, "wb") as f:
                    f.write(fields["audio"]["bytes"])
            except OSError as err:
                row["error"], row["error_kind"] = f"{row['source']}: writing {path} failed ({err})", "output"
                row.update(FAILED_OUTPUT)
                return
            fields["audio"]["path"] = path
            row["audio_size"] = len(fields["audio"]["bytes"])  # the books compare it with the file's size
        row.update(fields)
