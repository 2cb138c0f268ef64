"""Engine benchmark: upstream chattts `Chat.infer` vs raytts at batch 1 and at its budgeted batch, one run.

Same random checkpoint (`raytts make-checkpoint --preset full` by default), same texts, deterministic sampling
(temperature 1e-6, so every system generates the same codes and the same number of frames). Each system runs in
its own process so peak memory is its own, and gets one short untimed warm-up run before the timed one (so first-call
set-up, such as CUDA's, counts against neither). Prints a table and writes JSON.

    python benchmarks/engine.py [--preset full] [--eos-gain 1.8] [--texts 32] [--max-new-tokens 200] [--threads 2]
        [--device cpu|cuda] [--dtype D | --dtypes D1,D2] [--budget-mib N] [--batch1-texts 4]
        [--compiles off,inductor] [--skip-upstream] [--refine-compare] [--out benchmarks/results/engine-<device>.json]

Every system runs the code stage only (upstream's `skip_refine_text=True`, raytts's refine off), except with
`--refine-compare`, which runs upstream and `raytts synth` defaults with the refine-text stage off and on (refine
deterministic as well, temperature 1e-6) and reports refine's share of the engine's steps and of the wall time.

Upstream runs from the virtualenv of tools/upstream_venv.sh (UPSTREAM_VENV); raytts from this interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_EN = [
    "Hello world.",
    "The quick brown fox jumps over the lazy dog.",
    "One two three four five six seven eight nine ten, and then some more words to make a longer line.",
    "Thank you for calling, please hold the line while we connect you to the next available agent.",
    "Speech synthesis at scale needs batching, memory budgets and careful engineering.",
    "Short one.",
    "This chapter tells the story of a small team that built a fast text to speech service on a cluster.",
    "Good morning, today the weather is fine and the road is clear.",
]
_ZH = [
    "你好。",
    "今天天气很好，我们去公园散步吧。",
    "欢迎使用语音合成系统，这是一个比较长的句子，用来测试模型在不同长度输入下的表现。",
    "谢谢。",
    "这是一个关于速度和质量的故事。",
    "我们需要把文本转换成自然流畅的语音，并且保证每一行都不会丢失。",
    "早上好，欢迎收听今天的新闻。",
    "混合 English 和中文的句子。",
]


def texts(n: int) -> list[str]:
    pool = [t for pair in zip(_EN, _ZH, strict=True) for t in pair]
    return [pool[i % len(pool)] for i in range(n)]


def text_files(*counts: int) -> list[Path]:
    """.cache/bench/texts-N.json for each count N (the benchmark texts the worker subprocesses read)."""
    paths = []
    for count in counts:
        path = REPO / ".cache" / "bench" / f"texts-{count}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(texts(count), ensure_ascii=False))
        paths.append(path)
    return paths


def ensure_checkpoint(preset: str, seed: int, eos_gain: float | None = None) -> Path:
    from actors.checkpoint.random_weights import FORMAT_VERSION  # a new format writes new weights: a new folder

    name = f"{preset}-seed{seed}" + (f"-eos{eos_gain:g}" if eos_gain is not None else "") + f"-v{FORMAT_VERSION}"
    root = REPO / ".cache" / "bench" / name
    if not (root / "asset" / "Vocos.safetensors").exists():
        # In-process, not through the CLI: a GPU image has torch and safetensors but not the CLI's other imports.
        from actors.checkpoint.random_weights import EOS_GAIN, write_checkpoint

        write_checkpoint(root, preset, seed, EOS_GAIN if eos_gain is None else eos_gain)
    return root


def run_upstream(
    root: Path, text_file: Path, max_new: int, threads: int, device: str = "cpu", refine: bool = False
) -> dict:
    """Upstream `Chat.infer` in its own interpreter: UPSTREAM_PYTHON (one that can import ChatTTS, e.g. on a GPU
    machine with the upstream wheels of tools/gpu_wheels.sh on its path), else the virtualenv of
    tools/upstream_venv.sh (UPSTREAM_VENV, created when missing)."""
    python = os.environ.get("UPSTREAM_PYTHON")
    if not python:
        venv = (
            os.environ.get("UPSTREAM_VENV")
            or subprocess.run(
                ["bash", str(REPO / "tools" / "upstream_venv.sh")], check=True, capture_output=True, text=True
            ).stdout.strip()
        )
        python = f"{venv}/bin/python"
    out = subprocess.run(
        [python, str(REPO / "benchmarks" / "upstream_infer.py"), str(root), str(text_file), str(max_new), str(threads), device,
         "on" if refine else "off"],
        check=True, capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def worker(args: argparse.Namespace) -> None:
    """One raytts configuration in this process: prints a JSON line."""
    import torch

    from actors.engine.sampling import SamplingParams
    from actors.replica import Synthesizer
    from actors.requests import RefineOptions, SynthesisRequest

    torch.set_num_threads(args.threads)
    rows = json.loads(Path(args.texts_file).read_text())
    if args.as_synth:
        # exactly the replica `raytts synth --model M --max-new-tokens N` builds: its engine defaults, no budget or
        # slot flags (what a new user gets)
        from actors.replica import build_synthesizer
        from actors.settings import SYNTH_MAX_RESERVE, EngineSettings, OnnxSettings, RefineSettings

        engine = EngineSettings(
            device=args.device, dtype=args.dtype, backend=args.backend, onnx=OnnxSettings(quantize=args.onnx_quantize)
        )
        refine_settings = RefineSettings(enabled=args.refine == "on")
        max_new = min(SYNTH_MAX_RESERVE, args.max_new_tokens)
        synth = build_synthesizer(args.checkpoint, engine, max_new_tokens=max_new, refine=refine_settings)
    else:
        synth = Synthesizer(
            model=args.checkpoint,
            device=args.device,
            dtype=args.dtype,
            max_slots=args.slots,
            budget_mib=args.budget_mib,
            max_prompt_tokens=256,
            max_new_tokens=args.max_new_tokens,
            compile=args.compile,
            backend=args.backend,
            onnx={"quantize": args.onnx_quantize},
        )
    params = SamplingParams(temperature=1e-6, max_new_tokens=args.max_new_tokens, min_new_tokens=2)
    refine = RefineOptions(enabled=args.refine == "on", temperature=1e-6)  # upstream's refine defaults otherwise
    requests = [SynthesisRequest(id=f"r{i}", text=t, params=params, refine=refine) for i, t in enumerate(rows)]
    warm = [SynthesisRequest(id="warm", text="warm up.", params=SamplingParams(temperature=1e-6, max_new_tokens=8))]
    synth.synthesize(warm)
    if args.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    synth.batcher.stats = type(synth.batcher.stats)(blocks_total=synth.plan.pool_blocks)
    started = time.perf_counter()
    results = synth.synthesize(requests)
    if args.device == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - started
    failed = [r.error for r in results if r.error]
    frames = sum(int(r.codes.shape[0]) for r in results if r.codes is not None)
    print(
        json.dumps(
            {
                "wall_s": wall,
                "frames": frames,
                "rows": len(rows),
                "failed": len(failed),
                "slots": synth.plan.slots,
                "budget_source": synth.budget_source,
                "occupancy": synth.batcher.stats.occupancy,
                "attention_read_efficiency": synth.batcher.stats.attention_read_efficiency,
                "kv_held_share": synth.batcher.stats.kv_held_share,
                "accounting": synth.batcher.stats.accounting(),
                "busy_row_steps": synth.batcher.stats.busy_slot_steps,
                "kv_blocks": synth.plan.pool_blocks,
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "peak_device_mib": torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else None,
                "budget_mib": synth.budget_bytes / 2**20,
                "planned_mib": synth.plan.planned_bytes / 2**20,
                "decode_s": synth.stats.decode_s,
                "refined_segments": synth.stats.refined_segments,
                "refined_tokens": synth.stats.refined_tokens,
            }
        )
    )


def run_raytts(
    root: Path,
    text_file: Path,
    args: argparse.Namespace,
    slots: int | None,
    dtype: str | None,
    compile: str = "off",
    as_synth: bool = False,
    refine: bool = False,
    backend: str = "torch",
    onnx_quantize: str = "none",
) -> dict:
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "worker", "--checkpoint", str(root), "--texts-file", str(text_file),
        "--max-new-tokens", str(args.max_new_tokens), "--threads", str(args.threads), "--device", args.device,
        "--compile", compile, "--refine", "on" if refine else "off", "--backend", backend, "--onnx-quantize", onnx_quantize,
    ]  # fmt: skip
    if dtype:
        cmd += ["--dtype", dtype]
    if slots:
        cmd += ["--slots", str(slots)]
    if args.budget_mib and not as_synth:
        cmd += ["--budget-mib", str(args.budget_mib)]
    if as_synth:
        cmd += ["--as-synth"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarise(name: str, result: dict) -> dict:
    from actors.model.config import STEPS_PER_SECOND  # torch-free

    audio_s = result["frames"] / STEPS_PER_SECOND
    return {
        "system": name,
        "rows": result["rows"],
        "frames": result["frames"],
        "wall_s": round(result["wall_s"], 2),
        "frames_per_s": round(result["frames"] / result["wall_s"], 1),
        "audio_s_per_s": round(audio_s / result["wall_s"], 2),
        "rtf": round(result["wall_s"] / audio_s, 3) if audio_s else None,
        "peak_mib": round(result.get("peak_device_mib") or result["peak_rss_mib"]),
        "occupancy": round(result["occupancy"], 3) if "occupancy" in result else None,
        "slots": result.get("slots"),
        "read_eff": round(result["attention_read_efficiency"], 3) if "attention_read_efficiency" in result else None,
        "kv_held": round(result["kv_held_share"], 3) if "kv_held_share" in result else None,
        "in_flight": result["accounting"]["max_rows_in_flight"] if "accounting" in result else None,
        "preempt": result["accounting"]["preemptions"] if "accounting" in result else None,
        "accounting": result.get("accounting"),
        "budget": f"{result['budget_mib']:.0f} MiB ({result['budget_source']})"
        if result.get("budget_source")
        else None,
    }


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    w = sub.add_parser("worker")
    w.add_argument("--checkpoint", required=True)
    w.add_argument("--texts-file", required=True)
    w.add_argument("--max-new-tokens", type=int, required=True)
    w.add_argument("--threads", type=int, default=2)
    w.add_argument("--device", default="cpu")
    w.add_argument("--dtype", default=None)
    w.add_argument("--slots", type=int, default=None)
    w.add_argument("--budget-mib", type=int, default=None)
    w.add_argument("--compile", default="off")
    w.add_argument("--as-synth", action="store_true", help="build the replica `raytts synth` builds by default")
    w.add_argument("--refine", choices=("on", "off"), default="off")
    w.add_argument("--backend", choices=("torch", "onnx"), default="torch")
    w.add_argument("--onnx-quantize", choices=("none", "int8"), default="none")
    parser.add_argument("--preset", default="full")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--eos-gain",
        type=float,
        default=None,
        help="checkpoint's end-of-audio head scale (make-checkpoint --eos-gain): 1.8 ends rows at mixed lengths "
        "(7..200 frames for the 32 texts) as real weights do; default 1.2, where nearly every row runs to the limit",
    )
    parser.add_argument("--texts", type=int, default=32)
    parser.add_argument("--batch1-texts", type=int, default=4, help="rows for the batch-1 run (it is slow)")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--dtypes", default=None, help="comma list of dtypes for budgeted runs, e.g. float32,bfloat16")
    parser.add_argument("--budget-mib", type=int, default=None)
    parser.add_argument(
        "--compiles",
        default="off",
        help="comma list of engine compile modes for budgeted runs: off,inductor,cudagraphs",
    )
    parser.add_argument("--skip-upstream", action="store_true")
    parser.add_argument(
        "--refine-compare", action="store_true", help="upstream and synth defaults with refine off and on, nothing else"
    )
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args()


def _refine_systems(args: argparse.Namespace, root: Path, all_texts: Path) -> list[dict]:
    """Upstream (unless skipped) and `raytts synth` defaults, refine off then on, alternating; refine's shares."""
    rows = []
    for refine in (False, True):
        state = "on" if refine else "off"
        if not args.skip_upstream:
            result = run_upstream(root, all_texts, args.max_new_tokens, args.threads, args.device, refine)
            rows.append(summarise(f"upstream chattts 0.2.5, refine {state}", result))
        result = run_raytts(root, all_texts, args, None, args.dtype, as_synth=True, refine=refine)
        row = summarise(f"raytts synth defaults, refine {state}", result)
        accounting = result["accounting"]
        row["refine_row_step_share"] = round(accounting["text_row_steps"] / max(1, result["busy_row_steps"]), 3)
        row["refine_steps_shared"] = accounting["shared_steps"]
        row["refined_tokens"] = result["refined_tokens"]
        rows.append(row)
    for system in ("upstream chattts 0.2.5", "raytts synth defaults"):
        off = next((r for r in rows if r["system"] == f"{system}, refine off"), None)
        on = next((r for r in rows if r["system"] == f"{system}, refine on"), None)
        if off and on:
            on["refine_wall_share"] = round(1 - off["wall_s"] / on["wall_s"], 3)
    for refine in ("off", "on"):
        upstream = next((r for r in rows if r["system"] == f"upstream chattts 0.2.5, refine {refine}"), None)
        ours = next(r for r in rows if r["system"] == f"raytts synth defaults, refine {refine}")
        ours["vs_upstream"] = round(upstream["wall_s"] / ours["wall_s"], 2) if upstream else None
        if upstream:
            upstream["vs_upstream"] = 1.0
    return rows


def _systems(args: argparse.Namespace, root: Path, all_texts: Path, few_texts: Path) -> list[dict]:
    """Upstream (unless skipped), raytts at batch 1, then raytts budgeted per dtype and compile mode: one row each."""
    if args.refine_compare:
        return _refine_systems(args, root, all_texts)
    rows = []
    if not args.skip_upstream:
        rows.append(
            summarise(
                "upstream chattts 0.2.5 (static batch)",
                run_upstream(root, all_texts, args.max_new_tokens, args.threads, args.device),
            )
        )
    dtypes = args.dtypes.split(",") if args.dtypes else [args.dtype]
    # what `raytts synth` gives a new user: its defaults, no budget or slot flags
    rows.append(summarise("raytts synth defaults", run_raytts(root, all_texts, args, None, args.dtype, as_synth=True)))
    rows.append(
        summarise(
            f"raytts batch 1 ({dtypes[0] or 'default'})", run_raytts(root, few_texts, args, slots=1, dtype=dtypes[0])
        )
    )
    for dtype in dtypes:
        for mode in args.compiles.split(","):
            label = dtype or "default" if mode == "off" else f"{dtype or 'default'}, compile={mode}"
            rows.append(
                summarise(
                    f"raytts budgeted batch ({label})",
                    run_raytts(root, all_texts, args, slots=None, dtype=dtype, compile=mode),
                )
            )
    base = rows[0]["audio_s_per_s"] if not args.skip_upstream else None
    for row in rows:
        row["vs_upstream"] = round(row["audio_s_per_s"] / base, 2) if base else None
    return rows


def print_rows(rows: list[dict], header: list[str]) -> None:
    """`rows` as an aligned text table of the `header` columns."""
    widths = [max(len(h), *(len(str(r.get(h))) for r in rows)) for h in header]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("-|-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(str(row.get(h)).ljust(w) for h, w in zip(header, widths, strict=True)))


def _print_table(rows: list[dict]) -> None:
    header = [
        "system",
        "rows",
        "frames",
        "wall_s",
        "frames_per_s",
        "audio_s_per_s",
        "rtf",
        "peak_mib",
        "slots",
        "occupancy",
        "read_eff",
        "kv_held",
        "in_flight",
        "preempt",
        "vs_upstream",
    ]
    if any("refine_row_step_share" in r for r in rows):
        header += ["refine_row_step_share", "refine_steps_shared", "refine_wall_share"]
    print_rows(rows, header)
    for row in rows:
        if row.get("budget"):
            print(f"{row['system']}: budget {row['budget']}")


def main() -> None:
    args = _parse_args()
    if args.command == "worker":
        worker(args)
        return
    sys.path.insert(0, str(REPO))
    root = ensure_checkpoint(args.preset, args.seed, args.eos_gain)
    all_texts, few_texts = text_files(args.texts, args.batch1_texts)
    rows = _systems(args, root, all_texts, few_texts)
    _print_table(rows)
    report = {
        "preset": args.preset,
        "eos_gain": args.eos_gain,
        "device": args.device,
        "dtypes": args.dtypes or args.dtype or ("float16" if args.device == "cuda" else "float32"),
        "budget_mib": args.budget_mib,
        "compiles": args.compiles,
        "threads": args.threads,
        "max_new_tokens": args.max_new_tokens,
        "texts": args.texts,
        "machine": platform.processor() or platform.machine(),
        "results": rows,
    }
    out = args.out or REPO / "benchmarks" / "results" / f"engine-{args.device}-{args.preset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
