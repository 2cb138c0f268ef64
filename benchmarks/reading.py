"""Text-reading benchmark: how much of the reading catalogue (tests/fixtures/reading/catalogue.jsonl: English,
Chinese and mixed sentences, each with the spoken forms a careful narrator would use) the front end reads right, per
class, and what it costs per row.

A sentence is read right when the front end's spoken text (`full` mode: what the model is asked to say) equals one
of its expected forms after both are folded the same way: NFKC, lower case, punctuation and symbols removed, the
word "and" dropped (British and American number styles), apostrophes and accents dropped, 〇 as 零, and, where the text has Chinese characters, white
space removed. It also counts rows where a digit is left in the spoken text and rows whose `dropped_chars` holds a
character the input did not have.

    python benchmarks/reading.py [--repo PATH] [--out benchmarks/results/reading.json] [--show-wrong CLASS|all]

`--repo` scores another checkout's front end (an older commit) on this catalogue, for before/after tables.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import sys
import time
import unicodedata
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
CATALOGUE = HERE / "tests" / "fixtures" / "reading" / "catalogue.jsonl"
# Written after the rules' first version, by a helper who saw neither them nor the catalogue; one round of fixes
# came from its errors.
HELDOUT = HERE / "tests" / "fixtures" / "reading" / "heldout.jsonl"
# Written later still, by another helper; scored and never looked at: the number to expect on unseen text.
HELDOUT2 = HERE / "tests" / "fixtures" / "reading" / "heldout2.jsonl"
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
_DIGIT = re.compile(r"[0-9０-９]")


def fold(text: str) -> str:
    """A spoken form as compared: see the module docstring."""
    text = unicodedata.normalize("NFKC", text).lower().replace("〇", "零")
    text = re.sub(r"['’]", "", text)  # don't, o'clock: one word either way
    # café = cafe: the model's tokenizer strips accents (BERT normaliser), so the front end writes them plain
    text = "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))
    text = "".join(" " if unicodedata.category(ch)[0] in "PS" else ch for ch in text)
    text = re.sub(r"(?<=[\u3400-\u9fff])(?=[a-z])|(?<=[a-z])(?=[\u3400-\u9fff])", " ", text)  # 五十and: two words
    words = [w for w in text.split() if w != "and"]
    return "".join(words) if _CJK.search(text) else " ".join(words)


def load(path: Path = CATALOGUE) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def score(rows: list[dict], read) -> dict:
    """Per-class and overall accuracy of `read` over the catalogue rows, with per-row timings."""
    per_class: dict[str, Counter] = {}
    wrong, timings = [], []
    for row in rows:
        started = time.perf_counter()
        spoken, dropped = read(row["text"])
        timings.append((time.perf_counter() - started) * 1000)
        right = fold(spoken) in {fold(e) for e in row["expected"]}
        counts = per_class.setdefault(row["class"], Counter())
        counts["rows"] += 1
        counts["right"] += right
        counts["digit_left"] += bool(_DIGIT.search(spoken))
        counts["invented_dropped"] += any(ch not in row["text"] for ch in dropped)
        if not right:
            wrong.append({"id": row["id"], "class": row["class"], "text": row["text"], "spoken": spoken,
                          "dropped": dropped, "expected": row["expected"][0]})  # fmt: skip
    total = sum((c for c in per_class.values()), Counter())
    return {
        "rows": total["rows"], "right": total["right"], "accuracy": total["right"] / max(1, total["rows"]),
        "digit_left": total["digit_left"], "invented_dropped": total["invented_dropped"],
        "ms_per_row_median": statistics.median(timings), "ms_per_row_mean": statistics.fmean(timings),
        "ms_per_row_p95": sorted(timings)[int(0.95 * (len(timings) - 1))],
        "classes": {k: dict(v) | {"accuracy": v["right"] / v["rows"]} for k, v in sorted(per_class.items())},
        "wrong": wrong,
    }  # fmt: skip


def front_end(repo: Path):
    """`cleaned_and_dropped` in full mode from the checkout at `repo`, grammars loaded before timing."""
    sys.path.insert(0, str(repo))
    from actors.text import cleaned_and_dropped

    cleaned_and_dropped("warm up 1.", "full")
    cleaned_and_dropped("预热1。", "full")
    return lambda text: cleaned_and_dropped(text, "full")


def table(result: dict) -> str:
    lines = [f"{'class':<18}{'rows':>6}{'right':>7}{'accuracy':>10}{'digit left':>12}"]
    for name, c in result["classes"].items():
        lines.append(f"{name:<18}{c['rows']:>6}{c['right']:>7}{c['accuracy']:>10.1%}{c['digit_left']:>12}")
    lines.append(
        f"{'all':<18}{result['rows']:>6}{result['right']:>7}{result['accuracy']:>10.1%}{result['digit_left']:>12}"
    )
    lines.append(
        f"ms per row: median {result['ms_per_row_median']:.2f}, mean {result['ms_per_row_mean']:.2f}, "
        f"p95 {result['ms_per_row_p95']:.2f}; rows whose dropped_chars invent a character: "
        f"{result['invented_dropped']}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=HERE, help="the checkout whose front end is scored")
    parser.add_argument("--out", type=Path, help="write the result (JSON) here")
    parser.add_argument("--show-wrong", default="", help="print the rows read wrongly: a class name or 'all'")
    parser.add_argument("--catalogue", type=Path, default=CATALOGUE, help="the catalogue (default: the main one)")
    args = parser.parse_args()
    result = score(load(args.catalogue), front_end(args.repo.resolve()))
    print(table(result))
    for row in result["wrong"]:
        if args.show_wrong in ("all", row["class"]):
            print(f"\n{row['id']}: {row['text']}\n  got:      {row['spoken']}\n  expected: {row['expected']}")
    if args.out:
        meta = {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()}
        args.out.write_text(json.dumps({"meta": meta, "repo": str(args.repo)} | result, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
