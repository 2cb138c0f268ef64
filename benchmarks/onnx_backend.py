"""The onnxruntime backend against the torch backend and upstream, one run: speed, memory, int8 agreement.

    python benchmarks/onnx_backend.py [--preset full] [--eos-gain 1.8] [--texts 32] [--max-new-tokens 200] [--threads 2]
        [--batch1-texts 4] [--skip-upstream] [--skip-agreement] [--out benchmarks/results/onnx-backend-cpu.json]

Speed (benchmarks/engine.py's checkpoint, texts, deterministic sampling and per-system processes): upstream
`Chat.infer`; then `raytts synth` defaults (no budget or slot flags: what a user gets) on the torch backend (float32),
`--backend onnx` (float32 export) and `--backend onnx --onnx-quantize int8`; and each raytts backend at batch 1
(`--batch1-texts` rows, one slot). Code stage only (refine off on both sides), as the engine benchmark. The exports are
made before the timed runs (the replica's first start exports the checkpoint into the cache) and not timed.

Agreement (benchmarks/agreement.py's measures, temperature 0.3 = upstream's default, per-row seeds): onnx float32 and
onnx int8 against the torch float32 backend: identical rows, code agreement, first-difference frames, waveform SNR of
identical rows, and teacher-forced top-1 agreement and mean |logit difference|. benchmarks/results/agreement-cpu.json
holds float16/bfloat16's figures against the same reference for comparison.

(Not named onnx.py: run as a script, benchmarks/ is on sys.path, and the file would shadow the onnx package.)
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SYSTEMS = [  # (label, backend, onnx quantize)
    ("torch float32", "torch", "none"),
    ("onnx float32", "onnx", "none"),
    ("onnx int8", "onnx", "int8"),
]


def _cpu() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    wanted = sorted(f for f in flags if f.startswith(("avx512_vnni", "avx_vnni", "amx", "avx512_bf16")) or f == "avx2")
    return f"{model} ({' '.join(wanted)})"


def _export_first(root: Path, threads: int) -> dict[str, float]:
    """Make the cached exports the onnx systems will use (in a subprocess: its memory is not the runs'); seconds each."""
    seconds = {}
    for quantize in ("none", "int8"):
        code = (
            "import sys, time; sys.path.insert(0, sys.argv[1]); from actors.onnx.export import cached_export; "
            "t = time.perf_counter(); cached_export(sys.argv[2], dtype='float32', quantize=sys.argv[3]); "
            "print(time.perf_counter() - t)"
        )
        out = subprocess.run([sys.executable, "-c", code, str(REPO), str(root), quantize], check=True,
                             capture_output=True, text=True, cwd=REPO)  # fmt: skip
        seconds[quantize] = round(float(out.stdout.strip().splitlines()[-1]), 1)
    return seconds


def _speed(args: argparse.Namespace, root: Path, all_texts: Path, few_texts: Path) -> list[dict]:
    from benchmarks.engine import run_raytts, run_upstream, summarise

    rows = []
    if not args.skip_upstream:
        result = run_upstream(root, all_texts, args.max_new_tokens, args.threads, "cpu")
        rows.append(summarise("upstream chattts 0.2.5 (static batch)", result))
    for label, backend, quantize in SYSTEMS:
        result = run_raytts(root, all_texts, args, None, None, as_synth=True, backend=backend, onnx_quantize=quantize)
        rows.append(summarise(f"raytts synth defaults, {label}", result))
    for label, backend, quantize in SYSTEMS:
        result = run_raytts(root, few_texts, args, 1, None, backend=backend, onnx_quantize=quantize)
        rows.append(summarise(f"raytts batch 1, {label}", result))
    upstream = rows[0]["audio_s_per_s"] if not args.skip_upstream else None
    torch_defaults = next(r for r in rows if r["system"] == "raytts synth defaults, torch float32")["audio_s_per_s"]
    torch_batch1 = next(r for r in rows if r["system"] == "raytts batch 1, torch float32")["audio_s_per_s"]
    for row in rows:
        row["vs_upstream"] = round(row["audio_s_per_s"] / upstream, 2) if upstream else None
        base = torch_batch1 if "batch 1" in row["system"] else torch_defaults
        row["vs_torch_float32"] = round(row["audio_s_per_s"] / base, 2) if row["system"].startswith("raytts") else None
    return rows


def _agreement(args: argparse.Namespace, root: Path) -> list[dict]:
    import torch

    from actors.checkpoint import read_model_config
    from benchmarks.agreement import run
    from benchmarks.agreement_measures import compare, teacher_forced
    from benchmarks.engine import texts

    torch.set_num_threads(args.threads)
    eos = read_model_config(root / "asset").gpt.eos_code
    rows = texts(args.texts)
    args.device, args.budget_mib = "cpu", None
    reference, wall, reference_logits = run(root, rows, args, "float32")
    table = [{"system": "torch float32 (reference)", "wall_s": round(wall, 2),
              "frames": sum(len(r.codes) for r in reference)}]  # fmt: skip
    for label, backend, quantize in SYSTEMS[1:]:
        results, wall, logits = run(root, rows, args, None, reference, backend=backend, onnx_quantize=quantize)
        table.append({
            "system": label,
            "wall_s": round(wall, 2),
            "frames": sum(len(r.codes) for r in results),
            **compare(reference, results).to_dict(),
            **teacher_forced(reference_logits, logits, reference, eos),
        })  # fmt: skip
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="full")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eos-gain", type=float, default=1.8)
    parser.add_argument("--texts", type=int, default=32)
    parser.add_argument("--batch1-texts", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--temperature", type=float, default=0.3, help="agreement runs' sampling temperature")
    parser.add_argument("--skip-upstream", action="store_true")
    parser.add_argument("--skip-agreement", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    # engine.py's worker reads these from its own namespace
    args.device, args.budget_mib, args.dtype = "cpu", None, None

    from benchmarks.engine import ensure_checkpoint, print_rows, text_files

    root = ensure_checkpoint(args.preset, args.seed, args.eos_gain)
    all_texts, few_texts = text_files(args.texts, args.batch1_texts)
    export_s = _export_first(root, args.threads)
    speed = _speed(args, root, all_texts, few_texts)
    print_rows(speed, ["system", "rows", "frames", "wall_s", "frames_per_s", "audio_s_per_s", "peak_mib", "slots",
                   "vs_upstream", "vs_torch_float32"])  # fmt: skip
    agreement = [] if args.skip_agreement else _agreement(args, root)
    if agreement:
        print(f"\nagreement with torch float32, temperature {args.temperature}")
        print_rows(agreement, ["system", "wall_s", "frames", "identical_rows", "code_agreement", "waveform_snr_db_min",
                           "waveform_snr_db_median", "teacher_forced_top1_agreement",
                           "teacher_forced_mean_abs_logit_diff"])  # fmt: skip
    out = args.out or REPO / "benchmarks" / "results" / "onnx-backend-cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "command": "python benchmarks/onnx_backend.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "cpu": _cpu(),
        "threads": args.threads,
        "preset": args.preset,
        "eos_gain": args.eos_gain,
        "texts": args.texts,
        "max_new_tokens": args.max_new_tokens,
        "export_seconds": export_s,
        "speed": speed,
        "agreement_temperature": args.temperature,
        "agreement": agreement,
    }
    out.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
