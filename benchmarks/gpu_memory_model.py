"""GPU memory model of the engine, computed (no GPU needed) by the same planning code the replica runs.

For each GPU (H100 80 GB, L4 24 GB) in float16 with the full-size model: the budget a replica plans by default (85%
of the memory left after the weights), the rows in flight `plan_slots` gives at a reservation of prompt + new tokens
per row, and the KV bytes one decode step reads: every computed row up to the longest live row's context (today's
masked-prefix step) against each row reading only its own context (what per-row attention would read).

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


def model_rows(max_new_tokens: int, prompt_tokens: int, contexts: list[int]) -> list[dict]:
    import torch

    from actors.engine.memory import plan_slots
    from actors.model.config import ModelConfig

    config = ModelConfig.from_name("full")
    kv_per_token = config.gpt.kv_bytes_per_token(2)
    rows = []
    for name, total in GPUS.items():
        budget = int((total - WEIGHTS_FP16) * BUDGET_FRACTION)
        plan = plan_slots(config, torch.float16, budget, prompt_tokens, max_new_tokens)
        live = [contexts[i % len(contexts)] for i in range(plan.slots)]
        read_now = plan.slots * max(live) * kv_per_token
        read_own = sum(live) * kv_per_token
        rows.append(
            {
                "gpu": name,
                "budget_gb": round(budget / 1e9, 1),
                "slot_tokens": plan.slot_tokens,
                "rows_in_flight": plan.slots,
                "kv_held_share": round(sum(live) / (plan.slots * plan.slot_tokens), 3),
                "kv_read_per_step_gb": round(read_now / 1e9, 2),
                "kv_read_own_context_gb": round(read_own / 1e9, 2),
                "attention_read_efficiency": round(read_own / read_now, 3),
                "rows_if_reserved_by_context": int((plan.slots * plan.slot_tokens) / (sum(live) / len(live))),
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
