"""Build realistic job inputs for tests: text shards in several formats and reference-speaker audio."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

WORDS = "one two three four five six seven eight nine ten hello world speech voice story book".split()
ZH = "你好世界今天天气很好我们去公园散步吧谢谢"


def sentence(i: int) -> str:
    if i % 3 == 2:
        return ZH[i % 7 : i % 7 + 4 + i % 5] + "。"
    return " ".join(WORDS[(i + k) % len(WORDS)] for k in range(2 + i % 6)) + "."


def voice(seconds: float, rate: int, pitch: float) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * pitch * t) + 0.1 * np.sin(2 * np.pi * 2.1 * pitch * t)).astype(np.float32)


def write_speakers(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "speakers.jsonl", "w") as f:
        for k, name in enumerate(names):
            rate = [24_000, 16_000, 44_100][k % 3]
            sf.write(folder / f"{name}.wav", voice(1.5, rate, 110 + 40 * k), rate)
            f.write(json.dumps({"speaker": name, "audio": f"{name}.wav", "text": f"reference {name}"}) + "\n")
    return folder / "speakers.jsonl"


def write_text_shards(folder: Path, n: int, speakers: list[str]) -> list[str]:
    """n rows split over JSONL, CSV, TXT and Parquet shards; returns every expected id."""
    folder.mkdir(parents=True, exist_ok=True)
    ids: list[str] = []
    quarter = n // 4
    with open(folder / "a.jsonl", "w") as f:
        for i in range(quarter):
            row = {"id": f"j{i:05d}", "text": sentence(i), "seed": i}
            if speakers and i % 5 == 0:
                row["speaker"] = speakers[i % len(speakers)]
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            ids.append(row["id"])
    with open(folder / "b.csv", "w") as f:
        f.write("id,text,speaker\n")
        for i in range(quarter):
            speaker = speakers[i % len(speakers)] if speakers and i % 4 == 0 else "seed:7"
            f.write(f"c{i:05d},{sentence(i + 1).replace(',', ' ')},{speaker}\n")
            ids.append(f"c{i:05d}")
    txt_rows = quarter
    with open(folder / "c.txt", "w") as f:
        for i in range(txt_rows):
            f.write(sentence(i + 2) + "\n")
    rest = n - 3 * quarter
    table = pa.table({"id": [f"p{i:05d}" for i in range(rest)], "text": [sentence(i + 3) for i in range(rest)]})
    pq.write_table(table, folder / "d.parquet")
    ids.extend(f"p{i:05d}" for i in range(rest))
    return ids


def txt_ids(path: Path, count: int) -> list[str]:
    """The ids the job gives the first `count` lines of a .txt shard: derived from each line's content, with -2, -3,
    ... for repeated lines (`pipeline.identity`, `pipeline.inputs.identity_fixups`)."""
    import pyarrow as pa

    from pipeline.inputs import identity_fixups
    from pipeline.shards import parse_text_shard

    rows = parse_text_shard(str(path), path.read_bytes())[:count]
    column = lambda name, kind: pa.chunked_array([[r[name] for r in rows]], kind)  # noqa: E731
    fixups = identity_fixups(column("id", pa.string()), column("source", pa.string()), column("derived", pa.bool_()))
    return [fixups.get(r["source"], {}).get("id", r["id"]) for r in rows]
