"""The engine actor's batch PCM buffer and the parts' Parquet layout, made cheaper for the CPU stages (#35): the
samples must stay exactly `to_pcm16`'s, and a part must read back the same, with only the encoded audio's bytes
left uncompressed."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from actors.audio import pcm16_flat, to_pcm16
from pipeline.output import AUDIO_BYTES
from pipeline.parts import RUN_SCHEMA, write_part

# values around the clip points and the half-way points between 16-bit steps, where rounding decides
EDGES = [1.0, -1.0, 1.0000001, -1.0000001, 0.5 / 32767, -0.5 / 32767, 1.5 / 32767, 32766.5 / 32767, 3.0, -3.0, 0.0]
SAMPLES = st.one_of(st.floats(-3.0, 3.0, width=32), st.sampled_from(EDGES))
ROW = st.one_of(st.none(), arrays(np.float32, st.integers(0, 300), elements=SAMPLES))


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(ROW, max_size=8))
def test_the_batch_buffer_holds_exactly_each_rows_to_pcm16(rows):
    offsets, flat = pcm16_flat(rows)
    expected = [to_pcm16(row) if row is not None else np.zeros(0, np.int16) for row in rows]
    assert offsets.tolist() == [0, *np.cumsum([e.size for e in expected]).tolist()]
    assert flat.dtype == np.int16
    assert np.array_equal(flat, np.concatenate(expected) if expected else np.zeros(0, np.int16))


def test_a_part_keeps_its_columns_compressed_but_the_audio_bytes(tmp_path):
    rng = np.random.default_rng(0)
    audio = [rng.bytes(5000), rng.bytes(7000)]
    rows = [
        {"id": "a", "key": "a", "input_digest": "d1", "text": "t", "source": "in:1", "audio": {"bytes": audio[0], "path": "a.flac"}},
        {"id": "b", "key": "b", "input_digest": "d2", "text": "t", "source": "in:2", "audio": {"bytes": audio[1], "path": "b.flac"}},
    ]  # fmt: skip
    path = write_part(pa.Table.from_pylist(rows, schema=RUN_SCHEMA), str(tmp_path / "parts"))
    metadata = pq.ParquetFile(path).metadata.row_group(0)
    columns = {metadata.column(i).path_in_schema: metadata.column(i) for i in range(metadata.num_columns)}
    assert columns[AUDIO_BYTES].compression == "UNCOMPRESSED"
    assert not any("DICTIONARY" in encoding for encoding in columns[AUDIO_BYTES].encodings)
    assert {c.compression for name, c in columns.items() if name != AUDIO_BYTES} == {"SNAPPY"}
    back = pq.read_table(path, schema=RUN_SCHEMA)
    assert [a["bytes"] for a in back.column("audio").to_pylist()] == audio
    assert back.column("id").to_pylist() == ["a", "b"]
