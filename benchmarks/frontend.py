"""Text front end benchmark: the offline job's prepare stage, rows per second per core, per normalisation mode.

    python benchmarks/frontend.py [--rows 2000] [--repeat 3] [--out benchmarks/results/frontend.json]

Runs `pipeline.prepare.prepare_rows` (what the job's CPU prepare tasks run: normalise, clean, split, tokenise, with
the tiny checkpoint's tokenizer, which is the real tokenizer's format) on one core (this process, one thread,
TOKENIZERS_PARALLELISM=false) over a generated corpus of `--rows` rows in blocks of 64: English and Chinese
sentences with numbers, dates, times, money, percentages, phone numbers and units, plain sentences without any,
text mixing both languages, and long rows of several sentences. Each mode (`upstream`, `off`, `full`) runs on the
same blocks, `--repeat` times, best time kept; a warm-up pass first loads the grammars (their one-off load is
reported on its own). Reported: rows/s and characters/s per core, full vs upstream, and how many cores the prepare
stage needs to keep one engine fed at the real model's speed on a GPU: the GPU figure is the estimate in
../shared/perf.md (one H100 ~2,900 audio-seconds per second with paged reads; NOT measured, no GPU lent), turned
into rows/s with the corpus' spoken length at ~14 characters per second of speech for English and ~4.5 for Chinese
(ChatTTS' typical pace; an estimate as well).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GPU_AUDIO_SECONDS_PER_SECOND = 2900.0  # ../shared/perf.md "GPU estimates" (H100, paged reads): an estimate
CHARS_PER_AUDIO_SECOND = {"en": 14.0, "zh": 4.5}
BLOCK_ROWS = 64

_EN_NUMBERS = [
    "Call me at {a}-{b} on March {d}, {y}.",
    "The price is ${p}, about {pc}% off!",
    "The meeting starts at {h}:{m} and ends at {h2}:{m}.",
    "It is {k} km away and weighs {w} kg.",
    "I was born on {mo}/{d}/{y} in room {r}.",
    "Order #{r} shipped {n} boxes to 42 Main St. for ${p}.",
]
_EN_PLAIN = [
    "Good morning, and welcome to the evening news.",
    "The quick brown fox jumps over the lazy dog, and then it runs back again.",
    "Thank you for listening, and have a wonderful day.",
]
_ZH_NUMBERS = [
    "我有{n}个苹果，价格是{p}元。",
    "会议在{y}年{mo}月{d}日下午{h}点开始。",
    "他的电话是138{a}{b}，增长了{pc}%。",
    "这条路长{k}km，温度是-{n}°C。",
]
_ZH_PLAIN = ["今天的天气很好，适合出去散步。", "你好，欢迎使用语音合成。", "这一行来自表格文件，请仔细听。"]
_MIXED = [
    "他说 I have {n} cats and {n} dogs 然后走了。",
    "我的 iPhone {n} 花了{k}元。",
    "Meet me at {h}pm. 我们{h}点见。",
]


def corpus(rows: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)

    def fill(template: str) -> str:
        values = dict(
            a=rng.randint(100, 999), b=rng.randint(1000, 9999), d=rng.randint(1, 28), y=rng.randint(1950, 2030),
            p=f"{rng.randint(1, 999)}.{rng.randint(0, 99):02d}", pc=rng.randint(1, 99), h=rng.randint(1, 12),
            h2=rng.randint(1, 12), m=f"{rng.randint(0, 59):02d}", k=rng.randint(1, 500), w=rng.randint(1, 200),
            mo=rng.randint(1, 12), r=rng.randint(1, 999), n=rng.randint(1, 99),
        )  # fmt: skip
        return template.format(**values)

    texts = []
    for i in range(rows):
        kind = i % 10
        if kind < 3:
            texts.append(fill(rng.choice(_EN_NUMBERS)))
        elif kind < 5:
            texts.append(rng.choice(_EN_PLAIN))
        elif kind < 7:
            texts.append(fill(rng.choice(_ZH_NUMBERS)))
        elif kind == 7:
            texts.append(rng.choice(_ZH_PLAIN))
        elif kind == 8:
            texts.append(fill(rng.choice(_MIXED)))
        else:  # a long row: several sentences, some with numbers
            texts.append(" ".join(fill(rng.choice(_EN_NUMBERS + _EN_PLAIN)) for _ in range(8)))
    return texts


def blocks(texts: list[str]) -> list:
    import pyarrow as pa

    out = []
    for start in range(0, len(texts), BLOCK_ROWS):
        chunk = texts[start : start + BLOCK_ROWS]
        out.append(
            pa.table(
                {
                    "id": [f"r{start + i}" for i in range(len(chunk))],
                    "text": chunk,
                    "source": [f"bench.jsonl:{start + i + 1}" for i in range(len(chunk))],
                    "fields": ["{}"] * len(chunk),
                    "error": pa.array([None] * len(chunk), pa.string()),
                }
            )  # fmt: skip
        )
    return out


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "frontend.json"))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from actors.normalize import load
    from pipeline.job import tokenizer_of
    from pipeline.prepare import prepare_rows

    tokenizer = tokenizer_of("tiny", "auto")
    texts = corpus(args.rows)
    data = blocks(texts)
    chars = sum(len(t) for t in texts)
    before = _rss_mib()
    started = time.perf_counter()
    load()
    load_s, load_mib = time.perf_counter() - started, _rss_mib() - before

    def settings(mode: str) -> dict:
        return {"speaker": None, "normalize": mode, "strict_text": False, "max_segment_tokens": 120,
                "max_chars": 10_000, "references": {}}  # fmt: skip

    results: dict[str, dict] = {}
    spoken: dict[str, list[str]] = {}
    for mode in ("upstream", "off", "full"):
        prepare_rows(data[0], tokenizer, settings(mode))  # warm-up (first call's caches)
        best = float("inf")
        for _ in range(args.repeat):
            cpu0, wall0 = time.process_time(), time.perf_counter()
            out = [prepare_rows(block, tokenizer, settings(mode)) for block in data]
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            best = min(best, max(wall, cpu))  # one core: neither may be below the work done
        spoken[mode] = [s for block in out for s in block.column("spoken_text").to_pylist()]
        errors = sum(block.column("error").null_count != block.num_rows for block in out)
        dropped = sum(1 for block in out for d in block.column("dropped_chars").to_pylist() if d)
        digits = sum(1 for s in spoken[mode] if s and re.search(r"[0-9]", s))
        results[mode] = {
            "seconds": round(best, 3), "rows_per_s_per_core": round(len(texts) / best, 1),
            "chars_per_s_per_core": round(chars / best), "ms_per_row": round(1000 * best / len(texts), 3),
            "blocks_with_errors": errors, "rows_with_dropped_chars": dropped, "rows_with_digits_spoken": digits,
        }  # fmt: skip

    audio_s = 0.0
    for text in spoken["full"]:
        cjk = len(re.findall(r"[\u4e00-\u9fff]", text or ""))
        audio_s += cjk / CHARS_PER_AUDIO_SECOND["zh"] + (len(text or "") - cjk) / CHARS_PER_AUDIO_SECOND["en"]
    audio_per_row = audio_s / len(texts)
    gpu_rows_per_s = GPU_AUDIO_SECONDS_PER_SECOND / audio_per_row
    full, upstream = results["full"], results["upstream"]
    summary = {
        "full_vs_upstream_time": round(full["seconds"] / upstream["seconds"], 2),
        "grammar_load_s": round(load_s, 3),
        "grammar_load_rss_mib": round(load_mib, 1),
        "estimated_audio_s_per_row": round(audio_per_row, 2),
        "estimated_gpu_rows_per_s (H100, perf.md estimate)": round(gpu_rows_per_s, 1),
        "cores_to_feed_one_gpu_full": round(gpu_rows_per_s / full["rows_per_s_per_core"], 2),
        "cores_to_feed_one_gpu_upstream": round(gpu_rows_per_s / upstream["rows_per_s_per_core"], 2),
    }
    print(f"{len(texts)} rows, {chars} characters, blocks of {BLOCK_ROWS}, one core, best of {args.repeat}")
    print(f"{'mode':<10}{'rows/s/core':>13}{'chars/s/core':>14}{'ms/row':>9}{'rows w/ dropped':>17}{'digits left':>13}")
    for mode, r in results.items():
        print(f"{mode:<10}{r['rows_per_s_per_core']:>13}{r['chars_per_s_per_core']:>14}{r['ms_per_row']:>9}"
              f"{r['rows_with_dropped_chars']:>17}{r['rows_with_digits_spoken']:>13}")  # fmt: skip
    for key, value in summary.items():
        print(f"{key}: {value}")
    cpu = platform.processor() or platform.machine()
    record = {"rows": len(texts), "chars": chars, "cpu": cpu, "modes": results, "summary": summary}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
