"""Half precision vs float32 on the same weights, texts and seeds: codes agreement and waveform SNR.

    python benchmarks/agreement.py [--preset full] [--eos-gain 1.8] [--texts 32] [--max-new-tokens 200]
        [--device cpu|cuda] [--dtypes float16,bfloat16] [--temperature 0.3] [--threads 2]
        [--out benchmarks/results/agreement-<device>.json]

Runs one Synthesizer in float32 (the reference; on CUDA with TF32 off for matmuls and convolutions) and then one
per `--dtypes` entry, all on `--device`, with the engine benchmark's checkpoint and texts (benchmarks/engine.py)
and per-row seeds, and compares each with the reference (benchmarks/agreement_measures.py): rows with identical codes,
(frame, codebook) positions that match, the frame of each row's first difference, and the waveform SNR of rows
whose codes are identical, and the teacher-forced numbers: the share of (frame, codebook) positions where both
precisions' top-1 code is the same when both read float32's codes as their history, and the mean |logit difference|
there. Prints a table and writes JSON.

On CPU this checks the half-precision code path (float16 is the CUDA default) for dtype bugs and gives a first
agreement number; the number that counts for deployment is the one measured on a CUDA GPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def run(
    checkpoint: Path,
    rows: list[str],
    args: argparse.Namespace,
    dtype: str | None,
    forced_along: list | None = None,
    backend: str = "torch",
    onnx_quantize: str = "none",
) -> tuple[list, float, list]:
    """Synthesise `rows` in `dtype` on `backend`; also the replica's forced logits along `forced_along`'s codes (its
    own codes when None), taken before the replica is freed."""
    import torch

    from actors.engine.sampling import SamplingParams
    from actors.replica import Synthesizer
    from actors.requests import SynthesisRequest
    from benchmarks.agreement_measures import forced_logits

    synth = Synthesizer(
        model=checkpoint,
        device=args.device,
        dtype=dtype,
        max_prompt_tokens=256,
        max_new_tokens=args.max_new_tokens,
        budget_mib=args.budget_mib,
        backend=backend,
        onnx={"quantize": onnx_quantize},
    )
    requests = [
        SynthesisRequest(
            id=f"r{i}",
            text=text,
            params=SamplingParams(
                temperature=args.temperature, max_new_tokens=args.max_new_tokens, min_new_tokens=2, seed=1000 + i
            ),
        )
        for i, text in enumerate(rows)
    ]
    started = time.perf_counter()
    results = synth.synthesize(requests)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    wall = time.perf_counter() - started
    failed = [r.error for r in results if r.error]
    if failed:
        raise SystemExit(f"{dtype}: {len(failed)} rows failed, e.g. {failed[0]}")
    logits = forced_logits(synth, requests, forced_along or results)
    del synth
    if args.device.startswith("cuda"):
        # The next precision's replica sizes its default budget from the free memory: give this one's back first.
        gc.collect()
        torch.cuda.empty_cache()
    return results, wall, logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="full")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eos-gain", type=float, default=1.8)
    parser.add_argument("--texts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtypes", default="float16,bfloat16", help="comma list compared with float32")
    parser.add_argument("--temperature", type=float, default=0.3, help="upstream's default sampling temperature")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget-mib", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from actors.checkpoint import read_model_config
    from benchmarks.agreement_measures import compare, teacher_forced
    from benchmarks.engine import ensure_checkpoint, texts

    torch.set_num_threads(args.threads)
    # A true float32 reference: no TF32 in matmuls or cuDNN convolutions (the Vocos and decoder convs use cuDNN).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    checkpoint = ensure_checkpoint(args.preset, args.seed, args.eos_gain)
    eos = read_model_config(checkpoint / "asset").gpt.eos_code
    rows = texts(args.texts)
    reference, reference_wall, reference_logits = run(checkpoint, rows, args, "float32")
    table = [{"dtype": "float32", "wall_s": round(reference_wall, 2), "frames": sum(len(r.codes) for r in reference)}]
    for dtype in [d for d in args.dtypes.split(",") if d]:
        results, wall, logits = run(checkpoint, rows, args, dtype, forced_along=reference)
        agreement = compare(reference, results)
        table.append({
            "dtype": dtype,
            "wall_s": round(wall, 2),
            "frames": sum(len(r.codes) for r in results),
            **agreement.to_dict(),
            **teacher_forced(reference_logits, logits, reference, eos),
        })  # fmt: skip

    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(
        f"{args.preset} checkpoint, {args.texts} texts, temperature {args.temperature}, {args.device} ({device_name})"
    )
    print(
        f"{'dtype':>9} {'wall s':>7} {'frames':>7} {'identical rows':>15} {'code agreement':>15} {'SNR dB min/median':>18}"
    )
    for r in table:
        same = f"{r['identical_rows']}/{r['rows']}" if "rows" in r else "reference"
        agree = f"{r['code_agreement']:.4f}" if "code_agreement" in r else ""
        snr = (
            f"{r['waveform_snr_db_min']}/{r['waveform_snr_db_median']}"
            if r.get("waveform_snr_db_min") is not None
            else ""
        )
        top1 = r.get("teacher_forced_top1_agreement", "")
        dlogit = r.get("teacher_forced_mean_abs_logit_diff", "")
        print(
            f"{r['dtype']:>9} {r['wall_s']:>7} {r['frames']:>7} {same:>15} {agree:>15} {snr:>18} {top1!s:>13}"
            f" {dlogit!s:>16}"
        )
    out = args.out or REPO / "benchmarks" / "results" / f"agreement-{args.device.split(':')[0]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "command": "python benchmarks/agreement.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "device": f"{args.device} ({device_name})",
        "torch": torch.__version__,
        "preset": args.preset,
        "eos_gain": args.eos_gain,
        "texts": args.texts,
        "temperature": args.temperature,
        "max_new_tokens": args.max_new_tokens,
        "results": table,
    }
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
