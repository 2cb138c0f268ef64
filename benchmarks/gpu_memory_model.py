"""GPU memory model of the engine, computed (no GPU needed) by the same planning and grouping code the replica runs.

For each GPU (H100 80 GB, L4 24 GB) in float16 with the full-size model, the budget a replica plans by default (85%
of the memory left after the weights), and for a fixed 2 GiB budget in float32 and float16, before and after paging:
- before: every row reserves prompt + new tokens (`plan_slots(planned_row_share=1.0, exact_reads=False)`), and a
  decode step reads every row up to the longest live row's context (the masked-prefix step);
- after: `plan_slots` as the replica runs it (slots planned at a fifth of a row's maximum, a shared pool of KV
  blocks), rows in flight = as many of the live rows as the slots and blocks hold, and a step reads the blocks of
  `batcher.read_groups` (the eager step's groups), the bytes each group gathers.

    python benchmarks/gpu_memory_model.py [--max-new-tokens 2048] [--prompt-tokens 640] [--contexts 150,400,900]
        [--out benchmarks/results/gpu-memory-model.json]

`--contexts` are the live rows' context lengths, repeated to fill the slots (the default is a mixed spread like the
engine benchmark's texts at the real model's lengths: most rows short, a few long).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GPUS = {"H100 80 GB": 80 * 10**9, "L4 24 GB": 24 * 10**9}  # decimal GB, as sold
WEIGHTS_FP16 = 0.5 * 10**9  # ~0.45 GB of fp16 weights (GPT + Decoder + DVAE + Vocos), rounded up
BUDGET_FRACTION = 0.85
FIXED = {"2 GiB budget, float32": (2 << 30, "float32"), "2 GiB budget, float16": (2 << 30, "float16")}


def model_rows(max_new_tokens: int, prompt_tokens: int, contexts: list[int]) -> list[dict]:
    import torch

    from actors.engine.batcher import read_groups
    from actors.engine.memory import plan_slots
    from actors.model.config import ModelConfig

    config = ModelConfig.from_name("full")
    rows = []
    budgets = {name: (int((total - WEIGHTS_FP16) * BUDGET_FRACTION), "float16") for name, total in GPUS.items()}
    for name, (budget, dtype_name) in {**budgets, **FIXED}.items():
        dtype = getattr(torch, dtype_name)
        kv_per_token = config.gpt.kv_bytes_per_token(dtype.itemsize)
        before = plan_slots(
            config, dtype, budget, prompt_tokens, max_new_tokens, planned_row_share=1.0, exact_reads=False
        )
        live_before = [contexts[i % len(contexts)] for i in range(before.slots)]
        read_before = before.slots * max(live_before) * kv_per_token
        after = plan_slots(config, dtype, budget, prompt_tokens, max_new_tokens)
        live_after: list[int] = []
        blocks = 0
        while len(live_after) < after.slots:
            context = contexts[len(live_after) % len(contexts)]
            need = -(-context // after.block_size)
            if blocks + need > after.pool_blocks:
                break
            live_after.append(context)
            blocks += need
        groups = read_groups(list(enumerate(live_after)), after.block_size)
        gathered = sum(len(g) * -(-keys // after.block_size) * after.block_size for g, keys in groups)
        rows.append(
            {
                "plan": name,
                "budget_gb": round(budget / 1e9, 1),
                "slot_tokens": before.slot_tokens,
                "rows_before": before.slots,
                "rows_after": len(live_after),
                "rows_ratio": round(len(live_after) / before.slots, 2),
                "slots_after": after.slots,
                "kv_blocks_after": after.pool_blocks,
                "kv_held_share_before": round(sum(live_before) / (before.slots * before.slot_tokens), 3),
                "kv_held_share_after": round(sum(live_after) / (blocks * after.block_size), 3),
                "kv_read_per_step_gb_before": round(read_before / 1e9, 2),
                "kv_read_per_step_gb_after": round(gathered * kv_per_token / 1e9, 2),
                "read_efficiency_before": round(sum(live_before) / (before.slots * max(live_before)), 3),
                "read_efficiency_after": round(sum(live_after) / gathered, 3),
                "read_groups_after": len(groups),
                "kv_read_per_row_mb_before": round(read_before / before.slots / 1e6, 1),
                "kv_read_per_row_mb_after": round(gathered * kv_per_token / len(live_after) / 1e6, 1),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-new-tokens", type=int, default=2048)
    parser.add_argument("--prompt-tokens", type=int, default=640)
    parser.add_argument("--contexts", default="150,150,200,250,300,400,600,900")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "gpu-memory-model.json")
    args = parser.parse_args()
    contexts = [int(c) for c in args.contexts.split(",")]
    rows = model_rows(args.max_new_tokens, args.prompt_tokens, contexts)
    header = list(rows[0])
    print(" | ".join(header))
    for row in rows:
        print(" | ".join(str(row[h]) for h in header))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"max_new_tokens": args.max_new_tokens, "prompt_tokens": args.prompt_tokens, "contexts": contexts}
    args.out.write_text(json.dumps({**report, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
